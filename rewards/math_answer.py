"""The `math` verifier: the final answer of a competition-math solution, checked with math-verify.

Row fields: `ground_truth`, else `answer` (MATH-500's LaTeX answer, e.g. "\\frac{14}{3}"). The gold answer is
parsed once per worker, bounded by the row's CPU-time limit, and cached only on success (`parse_gold`); one
that does not parse to an expression is a RowError (a bad row), whatever the completion says.

The completion's answer is the content of its visible `\\boxed{...}` (braces balanced by a linear scan; several
different boxes are several candidates, read as a set), or else the math of the sentence after its last "final
answer is" / "Final Answer:". It must be one visible value (math_screen.py refuses relations, negations,
hidden text and several candidates; docs/rewards.md has examples). Equivalence (fractions, `\\frac` vs `/`,
`\\dfrac`, roots, pi, intervals, sets, units, 0.5 vs 1/2) is math-verify's, on the whole answer: both sides are
parsed as LaTeX by its parser, never by `sympify` of raw text. Answers longer than `max_answer_chars` or nested
deeper than `max_depth` braces are refused before parsing; the answer's parse and the comparison each
have a CPU-time limit (a row that hits one scores 0 with failure "timeout"), and the guard's limits bound
everything. Shortcuts give math-verify's own verdict without its cost: an answer written as the gold
answer is equal, two plain integers (which math-verify parses to sympy Integers) are compared by value, a
decided (gold, answer) pair is remembered, and math_shortcuts.py speeds up math-verify's parser and its
comparison of unequal answers (tests/test_math_shortcuts.py compares the verdicts with plain math-verify's).

Options: `max_answer_chars` (300), `max_depth` (12), `parse_timeout_s` (1), `compare_timeout_s` (2): CPU seconds.
"""
from __future__ import annotations

import functools
import re
from typing import Any

from posttrain.rewards.core import RowError, Verdict, Verifier, last_match, require_field, row_label
from posttrain.rewards.guard import BEFORE_FORK_HOOKS, CpuTimeout, cpu_limit
from posttrain.rewards.math_screen import balanced_group, hidden_intervals, literal_percent, refusal
from posttrain.rewards.math_shortcuts import install as install_shortcuts
from posttrain.rewards.registry import register_verifier

_BOXED = re.compile(r"\\(?:boxed|fbox)\b")
_FINAL_ANSWER = re.compile(r"final answer(?:\s+is\s*:?|\s*:)\s*", re.IGNORECASE)


def brace_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        depth += (char == "{") - (char == "}")
        deepest = max(deepest, depth)
    return deepest


def _box_content(text: str, after: int) -> str | None:
    """The argument of a \\boxed command ending at `after`: a brace group, or one token (`\\boxed 5`)."""
    while after < len(text) and text[after] == " ":
        after += 1
    if after < len(text) and text[after] == "{":
        return balanced_group(text, after)
    token = re.match(r"[^\s$]+", text[after:after + 100])
    return token.group(0) if token else None


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\boxed X), or None."""
    last = last_match(_BOXED, text)
    return None if last is None else _box_content(text, last.end())


def _visible(match: re.Match, hidden: list[tuple[int, int]]) -> bool:
    return not any(start <= match.start() < end for start, end in hidden)


def boxed_answers(text: str) -> list[str]:
    """The contents of every visible \\boxed{} (one that no hiding command covers), in order, without
    repeats; a box inside another's braces is part of it. Linear: each brace group is scanned once."""
    hidden, found, at = hidden_intervals(text), {}, 0  # a dict: ordered, and a linear look-up
    while (match := _BOXED.search(text, at)) is not None:
        content = _box_content(text, match.end())
        if content is None:  # never closes: nothing after it is a box of its own
            break
        if _visible(match, hidden):
            found.setdefault(" ".join(content.split()))
        at = match.end() + len(content) + 1
    return list(found)


def _after_final_answer(text: str) -> list[str]:
    """The answer stated by the last visible "final answer is" / "Final Answer:" phrase: the math spans of its
    sentence (the ones with a digit, if any has one), joined by ", " when there are several; without spans,
    the words after its last " is " ("Final Answer: The largest $n$ is 34." gives 34)."""
    hidden = hidden_intervals(text)
    last = None
    for match in _FINAL_ANSWER.finditer(text):
        last = match if _visible(match, hidden) else last
    if last is None:
        return []
    line = text[last.end():].split("\n", 1)[0].strip()
    sentence = re.split(r"\.(?:\s|$)", line, maxsplit=1)[0].strip()
    if not sentence.startswith("$") and " is " in sentence:
        sentence = sentence.rsplit(" is ", 1)[1].strip()
    spans = [s.strip() for s in re.findall(r"\$+([^$]*)\$+", sentence) if s.strip()]
    if spans:
        return [s for s in spans if re.search(r"\d", s)] or spans
    return [sentence.strip("$").strip()] if sentence.strip("$").strip() else []


def extract_answers(text: str) -> tuple[list[str], str]:
    """(the answer's parts, where they came from), or ([], ""): every visible box, else the spans of the
    final-answer sentence. Several different parts are several candidates."""
    boxes = boxed_answers(text)
    if boxes:
        return boxes, "boxed" if len(boxes) == 1 else f"{len(boxes)} boxes"
    phrase = _after_final_answer(text)
    return (phrase, "final answer phrase") if phrase else ([], "")


def extract_final_answer(text: str) -> tuple[str | None, str]:
    """(answer, where it came from), or (None, ""): the parts joined by ", ", which math-verify reads as a
    set, equal only to a gold answer of those values."""
    parts, source = extract_answers(text)
    return (", ".join(parts), source) if parts else (None, "")


WALL_BACKSTOP_S = 60  # math-verify's own timeouts are wall-clock: set far out of reach, a backstop only
_INTEGER = re.compile(r"-?\d{1,40}")
# LaTeX of the kinds competition answers take, parsed before workers fork (warm_up_parser): it fills the
# parser's shared prediction cache (ANTLR's DFA), which otherwise each worker builds slowly on its first rows
# (~2 ms a row over MATH-500). Intervals, tuples and vectors (with \\left( or not) and fractions cost most.
WARM_UP = ["\\frac{1}{2}", "-\\dfrac{3}{4}", "2\\sqrt{3}", "\\frac{\\sqrt{5}-1}{2}", "3\\pi", "\\pi^2", "x^2+2x+1",
           "(1,2)", "[0,1)", "(-\\infty, 3] \\cup (5, \\infty)", "\\{1,2,3\\}", "1, 2, 3", "3.14", "10\\%", "45^\\circ",
           "\\text{(A)}", "\\text{Monday}", "90\\text{ square units}", "\\$1.50", "2^{10}", "e^{i\\pi}", "\\log_2 8",
           "\\sin x", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "a+b\\sqrt{2}", "\\frac{a}{b}", "x=5", "y = 2x - 3",
           "4\\sqrt[3]{2}", "\\binom{5}{2}", "5!", "|x-1|", "\\infty", "-\\frac{\\pi}{4}", "1.5\\times 10^{3}",
           "\\left[ \\frac{\\pi}{6}, \\frac{7 \\pi^2}{3} \\right]", "\\left( \\frac{2}{7}, -5 \\right)", "(x+3)(y-1)",
           "\\left( 2, \\frac{\\pi}{3} \\right)", "(-\\sqrt{2}, 2\\sqrt{2})", "x \\in [-3,4]", "\\{2\\pm\\sqrt{7},5\\}",
           "\\begin{pmatrix} 1/2 \\\\ -3/4 \\\\ 7 \\end{pmatrix}", "\\begin{pmatrix} 2 & -1 \\\\ 0 & 3 \\end{pmatrix}",
           "3\\frac{2}{7}", "2x + 3y - 6z + 1 = 0", "y = 5x", "(4,-7,2,-11)", "1 \\pm 2\\sqrt{6}", "1011_{2}", "37_9",
           "x^4 - 2x^3 + x^2 - 5x + 3", "\\frac{7+3b}{10}", "4 - 3i", "2s^2+3s-9", "\\tan x", "\\sqrt{10}"]


def _integer(latex: str) -> int | None:
    """The value of a plain integer answer (whitespace runs made one space, as _parse does), else None."""
    latex = " ".join(latex.split())
    return int(latex) if _INTEGER.fullmatch(latex) else None


@functools.cache
def _answer_configs() -> list:
    """The answer's extraction configs, built once (math-verify caches its regexes by config)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(), ExprExtractionConfig()]


def _parse(latex: str, configs: list, wall_s: float | None, whole: bool = False) -> list:
    """math-verify's parse of `$latex$`, whitespace runs (newlines too: they are spaces to LaTeX) made one
    space. A plain integer, the most common answer, is built directly as math-verify builds it (a test
    checks they agree): its LaTeX parser costs ~10 ms a call. `whole`: only math-verify's first match (the
    whole text) is tried, so no expression comes back where it does not parse (math-verify's default then
    tries smaller matches: the last number of `\\neq 4`, of `5 ? 4`); where it parses, the result is the same."""
    latex = " ".join(latex.split())
    if _integer(latex) is not None:
        import sympy

        return [sympy.Integer(int(latex)), latex]
    from math_verify import parse

    install_shortcuts()
    mode = "first_match" if whole else "any_match"
    return parse(f"${latex}$", extraction_config=configs, extraction_mode=mode, parsing_timeout=wall_s)


@functools.lru_cache(maxsize=4096)
def parse_gold(gold: str) -> list:
    """The gold answer parsed by math-verify, cached only on success: a failure raises, and lru_cache keeps
    no exception, so it is raised each time, never remembered. Gold is trusted data: its parse is bounded by
    the guard's CPU-time limit of the row, and math-verify's wall-clock timeout is only a far backstop, so
    the verdict does not depend on machine load. Newlines (as in `90\\text{ square\nunits}`) are spaces to
    LaTeX and become spaces here."""
    from math_verify import LatexExtractionConfig

    parsed = _parse(gold, [LatexExtractionConfig()], WALL_BACKSTOP_S)
    if all(isinstance(x, str) for x in parsed):  # [] or only the text: no expression to compare with
        raise RowError(f"ground truth {gold[:80]!r} could not be parsed by math-verify")
    return parsed


def equivalent(gold: str, answer: str, parse_timeout_s: float = 1, compare_timeout_s: float = 2) -> tuple[bool, str]:
    """(equal?, reason) by math-verify; an answer it cannot parse counts as not equal. The answer's parse and
    the comparison each get that many CPU seconds (guard.cpu_limit; in a guard worker), raising CpuTimeout
    past them; math-verify's wall-clock timeouts are a backstop WALL_BACKSTOP_S away. An answer written
    exactly as the gold answer is equal without either. A decided pair is remembered (an RL group's
    completions often give the same answer); a timeout, which raises, never is."""
    return _decide(" ".join(gold.split()), " ".join(answer.split()), parse_timeout_s, compare_timeout_s)


@functools.lru_cache(maxsize=4096)  # keeps no exception: a CpuTimeout is decided again next time
def _decide(gold: str, answer: str, parse_timeout_s: float, compare_timeout_s: float) -> tuple[bool, str]:
    from math_verify import verify

    install_shortcuts()
    gold_parsed = parse_gold(gold)
    if answer == gold:  # both whitespace-normalised by equivalent()
        return True, f"equivalent (the gold answer's own text): {answer[:60]!r}"
    gold_int, answer_int = _integer(gold), _integer(answer)
    if gold_int is not None and answer_int is not None:  # both parse to sympy Integers: verify compares values
        ok = gold_int == answer_int
        return ok, f"{'equivalent' if ok else 'not equivalent'} integers: {answer[:60]!r} vs {gold[:60]!r}"
    with cpu_limit(parse_timeout_s):
        parsed = _parse(answer, _answer_configs(), WALL_BACKSTOP_S, whole=True)
    if all(isinstance(x, str) for x in parsed):  # the fallback text only: verify would compare strings
        return False, f"answer {answer[:60]!r} could not be parsed as a whole"
    with cpu_limit(compare_timeout_s):
        ok = verify(gold_parsed, parsed, timeout_seconds=WALL_BACKSTOP_S)
    return ok, f"{'equivalent' if ok else 'not equivalent'}: {answer[:60]!r} vs {gold[:60]!r}"


@functools.cache
def _warm_up() -> None:
    """Import and exercise math-verify (sympy, the LaTeX parser) once in the process that builds the verifier,
    so workers forked later inherit it. Best effort: a failure only means a slower start."""
    equivalent("\\frac{1}{2}", "0.5")


@functools.cache
def warm_up_parser() -> None:
    """Parse WARM_UP once, in the process about to fork guard workers (a guard.BEFORE_FORK_HOOKS hook, ~1.5 s):
    each worker would otherwise spend about that filling its own copy of the parser's cache. Best effort."""
    from math_verify import LatexExtractionConfig
    from math_verify.parser import logger

    # No wall-clock timeout: math-verify's uses signals, which a pool's thread (where the first fork may
    # come from) cannot set. Trusted text; its note that no timeout is set is silenced.
    logger.disabled, was = True, logger.disabled
    try:
        for latex in WARM_UP:
            try:
                _parse(latex, [LatexExtractionConfig()], None)
            except Exception:  # noqa: BLE001
                pass
    finally:
        logger.disabled = was


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
        if warm_up_parser not in BEFORE_FORK_HOOKS:
            BEFORE_FORK_HOOKS.append(warm_up_parser)

    def check(self, text: str, row: dict) -> Verdict:
        _warm_up()  # a no-op where this process or the one it was forked from did it
        gold = str(require_field(row, "ground_truth", "answer"))
        normalised_gold = " ".join(gold.split())
        try:  # first: a gold answer that cannot be parsed is a bad row whatever the completion says
            parse_gold(normalised_gold)
        except RowError as e:
            raise RowError(f"{row_label(row)}: {e}") from None
        parts, source = extract_answers(text)
        if not parts:
            return Verdict(0.0, "no \\boxed{} answer or 'final answer is'/'Final Answer:' phrase found")
        answer = ", ".join(parts)
        if len(answer) > self.max_answer_chars:
            return Verdict(0.0, f"answer refused: {len(answer):,} chars (limit {self.max_answer_chars})")
        depth = brace_depth(answer)
        if depth > self.max_depth:
            return Verdict(0.0, f"answer refused: braces nested {depth} deep (limit {self.max_depth})")
        refused = [why for part in parts if (why := refusal(normalised_gold, " ".join(part.split())))]
        if refused:
            return Verdict(0.0, f"answer {answer[:60]!r} refused: {refused[0]} ({source})")
        try:
            ok, why = equivalent(gold, literal_percent(normalised_gold, answer), self.parse_timeout_s, self.compare_timeout_s)
        except CpuTimeout:
            return Verdict(0.0, f"answer {answer[:60]!r}: parse or comparison over its CPU time limit", "timeout")
        return Verdict(float(ok), f"{why} ({source})")


register_verifier("math", MathVerifier)
