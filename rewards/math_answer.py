"""The `math` verifier: the final answer of a competition-math solution, checked with math-verify.

Row fields: `ground_truth`, else `answer` (MATH-500's LaTeX answer, e.g. "\\frac{14}{3}"). The gold answer is
parsed once per worker, bounded by the row's CPU-time limit, and cached only on success (`parse_gold`).

The completion's answer is the content of its last `\\boxed{...}` (braces balanced by a linear scan),
or else what follows its last "final answer is". Equivalence (fractions, `\\frac` vs `/`, `\\dfrac`,
roots, pi, intervals, sets, percentages, units, 0.5 vs 1/2) is math-verify's: both sides are parsed
as LaTeX by its parser, never by `sympify` of raw text. Answers longer than `max_answer_chars` or nested
deeper than `max_depth` braces are refused before parsing; the answer's parse and the comparison each
have a CPU-time limit (a row that hits one scores 0 with failure "timeout"), and the guard's limits bound
everything. Two shortcuts give math-verify's own verdict without its cost: an answer written as the gold
answer is equal, and two plain integers (which math-verify parses to sympy Integers) are compared by value.

Options: `max_answer_chars` (300), `max_depth` (12), `parse_timeout_s` (1), `compare_timeout_s` (2): CPU seconds.
"""
from __future__ import annotations

import functools
import re
from typing import Any

from posttrain.rewards.core import RowError, Verdict, Verifier, last_match, require_field
from posttrain.rewards.guard import CpuTimeout, cpu_limit
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
WALL_BACKSTOP_S = 60  # math-verify's own timeouts are wall-clock: set far out of reach, a backstop only
_INTEGER = re.compile(r"-?\d{1,40}")
# LaTeX of the kinds competition answers take, parsed once before workers fork: it fills the parser's
# shared prediction cache (ANTLR's DFA), which otherwise each worker builds slowly on its first rows.
WARM_UP = ["\\frac{1}{2}", "-\\dfrac{3}{4}", "2\\sqrt{3}", "\\frac{\\sqrt{5}-1}{2}", "3\\pi", "\\pi^2", "x^2+2x+1",
           "(1,2)", "[0,1)", "(-\\infty, 3] \\cup (5, \\infty)", "\\{1,2,3\\}", "1, 2, 3", "3.14", "10\\%", "45^\\circ",
           "\\text{(A)}", "\\text{Monday}", "90\\text{ square units}", "\\$1.50", "2^{10}", "e^{i\\pi}", "\\log_2 8",
           "\\sin x", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "a+b\\sqrt{2}", "\\frac{a}{b}", "x=5", "y = 2x - 3",
           "4\\sqrt[3]{2}", "\\binom{5}{2}", "5!", "|x-1|", "\\infty", "-\\frac{\\pi}{4}", "1.5\\times 10^{3}"]


@functools.cache
def _two_stage_latex_parser() -> None:
    """Make latex2sympy's ANTLR parser predict in SLL mode first and, only on a syntax error, parse again in
    the default LL mode: ANTLR's documented two-stage strategy, which gives the very tree LL gives (an SLL
    parse either matches LL's or reports an error, which latex2sympy raises). Intervals and tuples parse
    several times faster. Left alone when latex2sympy's internals are not the ones this was written for."""
    try:
        from antlr4.atn.PredictionMode import PredictionMode
        from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy as Converter
    except ImportError:
        return
    create = getattr(Converter, "create_parser", None)
    if not callable(create) or getattr(create, "two_stage", False):
        return

    def create_parser(self, latex_str):
        parser = create(self, latex_str)
        parser._interp.predictionMode = PredictionMode.SLL
        sll_math = parser.math

        def math():
            try:
                return sll_math()
            except Exception:  # noqa: BLE001 - a syntax error in SLL: LL decides, as without this
                return create(self, latex_str).math()

        parser.math = math
        return parser

    create_parser.two_stage, create_parser.ll = True, create
    Converter.create_parser = create_parser


def _integer(latex: str) -> int | None:
    """The value of a plain integer answer (whitespace runs made one space, as _parse does), else None."""
    latex = " ".join(latex.split())
    return int(latex) if _INTEGER.fullmatch(latex) else None


@functools.cache
def _answer_configs() -> list:
    """The answer's extraction configs, built once (math-verify caches its regexes by config)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(), ExprExtractionConfig()]


def _parse(latex: str, configs: list, wall_s: float) -> list:
    """math-verify's parse of `$latex$`, whitespace runs (newlines too: they are spaces to LaTeX) made one
    space. A plain integer, the most common answer, is built directly as math-verify builds it (a test
    checks they agree): its LaTeX parser costs ~10 ms a call."""
    latex = " ".join(latex.split())
    if _integer(latex) is not None:
        import sympy

        return [sympy.Integer(int(latex)), latex]
    from math_verify import parse

    _two_stage_latex_parser()
    return parse(f"${latex}$", extraction_config=configs, parsing_timeout=wall_s)


def parse_gold(gold: str) -> list:
    """The gold answer parsed by math-verify, cached only on success: a failure is raised each time, never
    remembered. Gold is trusted data: its parse is bounded by the guard's CPU-time limit of the row, and
    math-verify's wall-clock timeout is only a far backstop, so the verdict does not depend on machine load.
    Newlines (as in `90\\text{ square\nunits}`) are spaces to LaTeX and become spaces here."""
    if gold not in _GOLD_CACHE:
        from math_verify import LatexExtractionConfig

        parsed = _parse(gold, [LatexExtractionConfig()], WALL_BACKSTOP_S)
        if not parsed:
            raise RowError(f"ground truth {gold[:80]!r} could not be parsed by math-verify")
        if len(_GOLD_CACHE) > 4096:
            _GOLD_CACHE.clear()
        _GOLD_CACHE[gold] = parsed
    return _GOLD_CACHE[gold]


def equivalent(gold: str, answer: str, parse_timeout_s: float = 1, compare_timeout_s: float = 2) -> tuple[bool, str]:
    """(equal?, reason) by math-verify; an answer it cannot parse counts as not equal. The answer's parse and
    the comparison each get that many CPU seconds (guard.cpu_limit; in a guard worker), raising CpuTimeout
    past them; math-verify's wall-clock timeouts are a backstop WALL_BACKSTOP_S away. An answer written
    exactly as the gold answer is equal without either."""
    from math_verify import verify

    gold_parsed = parse_gold(gold)
    if " ".join(answer.split()) == " ".join(gold.split()):
        return True, f"equivalent (the gold answer's own text): {answer[:60]!r}"
    gold_int, answer_int = _integer(gold), _integer(answer)
    if gold_int is not None and answer_int is not None:  # both parse to sympy Integers: verify compares values
        ok = gold_int == answer_int
        return ok, f"{'equivalent' if ok else 'not equivalent'} integers: {answer[:60]!r} vs {gold[:60]!r}"
    with cpu_limit(parse_timeout_s):
        parsed = _parse(answer, _answer_configs(), WALL_BACKSTOP_S)
    if not parsed:
        return False, f"answer {answer[:60]!r} could not be parsed"
    with cpu_limit(compare_timeout_s):
        ok = verify(gold_parsed, parsed, timeout_seconds=WALL_BACKSTOP_S)
    return ok, f"{'equivalent' if ok else 'not equivalent'}: {answer[:60]!r} vs {gold[:60]!r}"


@functools.cache
def _warm_up() -> None:
    """Import and exercise math-verify (sympy, the LaTeX parser) once in the process that builds the
    verifier, so forked workers inherit it warm (WARM_UP). Best effort: a failure only means a slower start."""
    from math_verify import LatexExtractionConfig

    for latex in WARM_UP:
        try:
            _parse(latex, [LatexExtractionConfig()], WALL_BACKSTOP_S)
        except Exception:  # noqa: BLE001
            pass
    equivalent("\\frac{1}{2}", "0.5")


class MathVerifier(Verifier):
    name = "math"
    default_time_limit_s = 5.0

    def __init__(self, *, max_answer_chars: int = 300, max_depth: int = 12, parse_timeout_s: float = 1,
                 compare_timeout_s: float = 2, **base: Any):
        super().__init__(**base)
        self.max_answer_chars = max_answer_chars
        self.max_depth = max_depth
        self.parse_timeout_s = float(parse_timeout_s)
        self.compare_timeout_s = float(compare_timeout_s)
        _warm_up()

    def check(self, text: str, row: dict) -> Verdict:
        _warm_up()  # a no-op where this process or the one it was forked from did it
        gold = str(require_field(row, "ground_truth", "answer"))
        answer, source = extract_final_answer(text)
        if answer is None:
            return Verdict(0.0, "no \\boxed{} answer or 'final answer is' phrase found")
        if len(answer) > self.max_answer_chars:
            return Verdict(0.0, f"answer refused: {len(answer):,} chars (limit {self.max_answer_chars})")
        depth = brace_depth(answer)
        if depth > self.max_depth:
            return Verdict(0.0, f"answer refused: braces nested {depth} deep (limit {self.max_depth})")
        try:
            ok, why = equivalent(gold, answer, self.parse_timeout_s, self.compare_timeout_s)
        except CpuTimeout:
            return Verdict(0.0, f"answer {answer[:60]!r}: parse or comparison over its CPU time limit", "timeout")
        return Verdict(float(ok), f"{why} ({source})")


register_verifier("math", MathVerifier)
