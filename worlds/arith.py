"""Skill: two-digit addition/subtraction word problems, answered "... The answer is N." (numeric verifier).

Problems are (a, op, b) with a, b in 10..99 (a >= b for subtraction). Teachers: `tutor` (column working,
always right), `hasty` (same working, forgets the carry/borrow half of the time), `terse` (no working,
right), `guesser` (no working, off by up to 10 half of the time).
"""
from __future__ import annotations

import random

from posttrain.worlds.skill import Skill

NAMES = ["Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Ivy", "Jon", "Kim", "Lea", "Max"]
ITEMS = ["apples", "pens", "cards", "coins", "books", "shells", "stamps", "marbles"]
ADD_TEMPLATES = ["{n} has {a} {i} and gets {b} more. How many now?",
                 "{n} had {a} {i}, then found {b}. How many in all?"]
SUB_TEMPLATES = ["{n} has {a} {i} and gives away {b}. How many left?",
                 "{n} had {a} {i} and lost {b}. How many remain?"]


def problems() -> list[tuple[int, str, int]]:
    adds = [(a, "+", b) for a in range(10, 100) for b in range(10, 100)]
    subs = [(a, "-", b) for a in range(10, 100) for b in range(10, a + 1)]
    return adds + subs


def answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def question(p, rng: random.Random) -> str:
    a, op, b = p
    template = rng.choice(ADD_TEMPLATES if op == "+" else SUB_TEMPLATES)
    return template.format(n=rng.choice(NAMES), i=rng.choice(ITEMS), a=a, b=b)


def column_steps(a: int, op: str, b: int, slip: bool) -> tuple[str, int]:
    """Digit-by-digit working; with `slip` the teacher forgets the carry/borrow."""
    (a1, a0), (b1, b0) = divmod(a, 10), divmod(b, 10)
    if op == "+":
        low = a0 + b0
        carry = 0 if slip else low // 10
        steps = f"{a0}+{b0}={low}" + (f", carry {carry}" if carry else "") + f"; {a1}+{b1}+{carry}={a1 + b1 + carry}"
        return steps, (a1 + b1 + carry) * 10 + low % 10
    borrow = 0 if slip else int(a0 < b0)
    low = a0 + 10 * int(a0 < b0) - b0
    steps = f"{a0 + 10 * int(a0 < b0)}-{b0}={low}" + (f", borrow {borrow}" if borrow else "") \
        + f"; {a1}-{b1}-{borrow}={a1 - b1 - borrow}"
    return steps, (a1 - b1 - borrow) * 10 + low


def _worked(p, slip: bool) -> str:
    steps, result = column_steps(*p, slip=slip)
    return f"{p[0]}{p[1]}{p[2]}: {steps}. The answer is {result}."


def _short(p, result: int) -> str:
    return f"{p[0]}{p[1]}{p[2]}={result}. The answer is {result}."


TEACHERS = {
    "tutor": lambda p, rng: _worked(p, slip=False),
    "hasty": lambda p, rng: _worked(p, slip=rng.random() < 0.5),
    "terse": lambda p, rng: _short(p, answer(*p)),
    "guesser": lambda p, rng: _short(p, answer(*p) + (rng.choice([-10, -1, 1, 10]) if rng.random() < 0.5 else 0)),
}

SKILL = Skill("arithmetic", "numeric", problems, key=lambda p: f"{p[0]}{p[1]}{p[2]}", question=question,
              fields=lambda p: {"ground_truth": str(answer(*p))}, teachers=TEACHERS)
