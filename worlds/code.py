"""Skill: write a one-line Python function, checked by the `code` verifier (sandboxed, hidden test calls).

A problem is (name, form, a, b), e.g. ("g", "mul_add", 3, 4): "Write g(x) returning x times 3 plus 4.",
answered `def g(x): return x*3+4` and tested with MBPP-style asserts at a few inputs the prompt never shows.
Teachers: `oneliner` (right), `fenced` (right, a fenced multi-line function), `swapper` (mixes up the two
numbers, or is off by one, half of the time).
"""
from __future__ import annotations

import random

from posttrain.worlds.skill import Skill

NAMES = ["f", "g", "h"]
NUMBERS = range(2, 20)
FORMS = {  # form -> (words, expression, value); one-number forms ignore b
    "mul_add": ("x times {a} plus {b}", "x*{a}+{b}", lambda x, a, b: x * a + b),
    "mul_sub": ("x times {a} minus {b}", "x*{a}-{b}", lambda x, a, b: x * a - b),
    "add": ("x plus {a}", "x+{a}", lambda x, a, b: x + a),
    "sub": ("x minus {a}", "x-{a}", lambda x, a, b: x - a),
    "mul": ("x times {a}", "x*{a}", lambda x, a, b: x * a),
    "rsub": ("{a} minus x", "{a}-x", lambda x, a, b: a - x),
}
TEST_INPUTS = (0, 1, 3, -2)


def problems() -> list[tuple[str, str, int, int]]:
    return [(name, form, a, b) for name in NAMES for form, (words, *_) in FORMS.items() for a in NUMBERS
            for b in (NUMBERS if "{b}" in words else [0])]


def question(p, rng: random.Random) -> str:
    name, form, a, b = p
    return f"Write {name}(x) returning {FORMS[form][0].format(a=a, b=b)}."


def expression(form: str, a: int, b: int) -> str:
    return FORMS[form][1].format(a=a, b=b)


def fields(p) -> dict:
    name, form, a, b = p
    tests = [f"assert {name}({x}) == {FORMS[form][2](x, a, b)}" for x in TEST_INPUTS]
    return {"ground_truth": f"def {name}(x): return {expression(form, a, b)}", "test_list": tests}


def _swapped(p, rng: random.Random) -> str:
    name, form, a, b = p
    if rng.random() < 0.5:
        return f"def {name}(x): return {expression(form, a, b)}"
    wrong = expression(form, b, a) if b else expression(form, a + 1, b)
    return f"def {name}(x): return {wrong}"


TEACHERS = {
    "oneliner": lambda p, rng: f"def {p[0]}(x): return {expression(*p[1:])}",
    "fenced": lambda p, rng: f"```python\ndef {p[0]}(x):\n    return {expression(*p[1:]).replace('*', ' * ')}\n```",
    "swapper": _swapped,
}

SKILL = Skill("code", "code", problems, key=lambda p: f"code|{p[0]}|{p[1]}|{p[2]}|{p[3]}", question=question,
              fields=fields, teachers=TEACHERS)
