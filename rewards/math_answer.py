"""The `math` verifier: the final answer of a competition-math solution, checked with math-verify.

Row fields: `ground_truth`, else `answer` (MATH-500's LaTeX answer, e.g. "\\frac{14}{3}"). The gold answer is
parsed once per worker without a timeout and cached only on success (`parse_gold`).

The completion's answer is the content of its last `\\boxed{...}` (braces balanced by a linear scan),
or else what follows its last "final answer is". Equivalence (fractions, `\\frac` vs `/`, `\\dfrac`,
roots, pi, intervals, sets, percentages, units, 0.5 vs 1/2) is math-verify's: both sides are parsed
as LaTeX by its parser, never by `sympify` of raw text. Answers longer than `max_answer_chars` or nested
deeper than `max_depth` braces are refused before parsing; math-verify's own timeouts (signal based,
so they work here because verifiers run in a worker's main thread) bound the rest, and the guard's
hard limit bounds everything.

Options: `max_answer_chars` (300), `max_depth` (12), `parse_timeout_s` (1), `compare_timeout_s` (2).
"""
from __future__ import annotations

import functools
import re
from typing import Any

from posttrain.rewards.core import RowError, Verdict, Verifier, last_match, require_field
from posttrain.rewards.registry import register_verifier

_BOXED = re.compile(r"\\(?:boxed|fbox)\b")
_FINAL_ANSWER = re.compile(r"final answer is\s*:?\s*", re.IGNORECASE)


def balanced_group(text: str, open_at: int) -> str | None:
    """The content of the brace group opening at `open_at`, or None if it never closes."""
    depth = 0
    for i in range(open_at, len(text)):
        depth += (text[i] == "{") - (text[i] == "}")
        if depth == 0:
            return text[open_at + 1:i]
    return None


def brace_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        depth += (char == "{") - (char == "}")
        deepest = max(deepest, depth)
    return deepest


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\boxed X), or None."""
    last = last_match(_BOXED, text)
    if last is None:
        return None
    rest = last.end()
    while rest < len(text) and text[rest] == " ":
        rest += 1
    if rest < len(text) and text[rest] == "{":
        return balanced_group(text, rest)
    token = re.match(r"[^\s$]+", text[rest:rest + 100])  # "\\boxed 5"
    return token.group(0) if token else None


def _after_final_answer(text: str) -> str | None:
    last = last_match(_FINAL_ANSWER, text)
    if last is None:
        return None
    line = text[last.end():].split("\n", 1)[0].strip()
    if line.startswith("$"):
        return line.strip("$").split("$", 1)[0].strip() or None
    return re.split(r"\.(?:\s|$)", line, maxsplit=1)[0].strip() or None


def extract_final_answer(text: str) -> tuple[str | None, str]:
    """(answer, where it came from), or (None, "")."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed, "boxed"
    phrase = _after_final_answer(text)
    return (phrase, "final answer phrase") if phrase is not None else (None, "")


_GOLD_CACHE: dict[str, list] = {}
GOLD_PARSE_LIMIT_S = 60  # far beyond any load; the guard worker's hard limit comes first


def parse_gold(gold: str) -> list:
    """The gold answer parsed by math-verify, cached only on success: a failure is raised each time, never
    remembered. Gold is trusted data, so math-verify's wall-clock timeout is set far out of reach (the worker's
    hard limit still bounds it), and its verdict does not depend on how busy the machine is. Newlines (as in
    `90\\text{ square\nunits}`) are spaces to LaTeX and become spaces here."""
    if gold not in _GOLD_CACHE:
        from math_verify import LatexExtractionConfig, parse

        parsed = parse(f"${' '.join(gold.split())}$", extraction_config=[LatexExtractionConfig()],
                       parsing_timeout=GOLD_PARSE_LIMIT_S)
        if not parsed:
            raise RowError(f"ground truth {gold[:80]!r} could not be parsed by math-verify")
        if len(_GOLD_CACHE) > 4096:
            _GOLD_CACHE.clear()
        _GOLD_CACHE[gold] = parsed
    return _GOLD_CACHE[gold]


def equivalent(gold: str, answer: str, parse_timeout_s: int = 1, compare_timeout_s: int = 2) -> tuple[bool, str]:
    """(equal?, reason) by math-verify; its parse errors and timeouts count as not equal."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold_parsed = parse_gold(gold)
    parsed = parse(f"${' '.join(answer.split())}$", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                   parsing_timeout=parse_timeout_s)
    if not parsed:
        return False, f"answer {answer[:60]!r} could not be parsed (or parsing timed out)"
    ok = verify(gold_parsed, parsed, timeout_seconds=compare_timeout_s)
    return ok, f"{'equivalent' if ok else 'not equivalent (or comparison timed out)'}: {answer[:60]!r} vs {gold[:60]!r}"


@functools.cache
def _warm_up() -> None:
    """Import and exercise math-verify (sympy, the LaTeX parser) once in the process that builds the
    verifier, so forked workers inherit it warm: a cold import inside a worker can eat the parse timeout
    and score a correct answer 0. Best effort: a failure here only means a cold start later."""
    try:
        equivalent("\\frac{1}{2}", "0.5")
    except Exception:  # noqa: BLE001
        pass


class MathVerifier(Verifier):
    name = "math"
    default_time_limit_s = 5.0

    def __init__(self, *, max_answer_chars: int = 300, max_depth: int = 12, parse_timeout_s: int = 1,
                 compare_timeout_s: int = 2, **base: Any):
        super().__init__(**base)
        self.max_answer_chars = max_answer_chars
        self.max_depth = max_depth
        self.parse_timeout_s = int(parse_timeout_s)
        self.compare_timeout_s = int(compare_timeout_s)
        _warm_up()

    def check(self, text: str, row: dict) -> Verdict:
        gold = str(require_field(row, "ground_truth", "answer"))
        answer, source = extract_final_answer(text)
        if answer is None:
            return Verdict(0.0, "no \\boxed{} answer or 'final answer is' phrase found")
        if len(answer) > self.max_answer_chars:
            return Verdict(0.0, f"answer refused: {len(answer):,} chars (limit {self.max_answer_chars})")
        depth = brace_depth(answer)
        if depth > self.max_depth:
            return Verdict(0.0, f"answer refused: braces nested {depth} deep (limit {self.max_depth})")
        ok, why = equivalent(gold, answer, self.parse_timeout_s, self.compare_timeout_s)
        return Verdict(float(ok), f"{why} ({source})")


register_verifier("math", MathVerifier)
