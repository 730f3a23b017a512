"""The `numeric` verifier (alias `gsm8k`): final numeric answer vs. the row's ground truth.

Row fields:
- `ground_truth`: the expected number as a string ("18", "-3.5", "3/4", "1,234"), or an int/float;
- else `answer`: a GSM8K solution whose final line is `#### N`.

Options:
- `extract`: the extraction modes, tried in order until one finds a number (default: all three):
  - "answer_is": the number after the last "The answer is" / "answer:" (the tiny arithmetic task ends
    every solution with "The answer is N.");
  - "hashes": the number after the last `####` (GSM8K's own format);
  - "last_number": the last number anywhere in the text.
- `rel_tol`, `abs_tol`: the tolerance for a ground truth that is not an integer (1/3, 0.3333333),
  |got - expected| <= max(rel_tol * |expected|, abs_tol). An integer ground truth is compared exactly: no
  tolerance accepts 191,999,900 for 192,000,000.

After an anchor ("The answer is", "####") there must be one number. Another number joined to it ("18 or 19",
"17-19", "18, 19", "18 to 20", with up to two words between: "18 apples or 19") makes it several candidates,
and a self-correction after it (a correction word such as "wait", "actually", "sorry", "I mean", after which
the text's last number has another value: "The answer is 18... no wait, it is 20") makes it hedged: both score 0
(a re-check that ends on the same value is fine). To correct itself, a completion states the anchor again
("... The answer is 20."): the last anchor counts. The `last_number` mode has no anchor and no such rule.

A number may carry thousands separators ("1,000.5"), a sign ("-0.50"), a decimal part, a decimal exponent
("1e3", "2.5E-3"; at most 3 exponent digits), a fraction bar ("3/4"), a currency sign, or a trailing unit.
A percent sign is ignored: "50%" reads 50 (not 0.5), so write the ground truth the way the answer is asked. Parsing is by regex and `fractions.Fraction`, never eval, and a
number with more than MAX_DIGITS digits is refused rather than converted.
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Iterable

from posttrain.rewards.core import RowError, Verdict, Verifier, last_match, row_label
from posttrain.rewards.registry import register_verifier

MAX_DIGITS = 40
EXTRACT_MODES = ("answer_is", "hashes", "last_number")

_NUMBER = re.compile(
    r"(?P<sign>[-+\u2212])?[$\u20ac\u00a3\u00a5\u20b9]?\s?(?P<sign2>[-+\u2212])?"
    r"(?P<num>(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d{1,3}(?!\d))?)"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?))?"
)
_ANCHORS = {
    "answer_is": re.compile(r"\banswer(?:\s+is)?\s*:?", re.IGNORECASE),
    "hashes": re.compile(r"####"),
}
_BETWEEN_ANCHOR_AND_NUMBER = re.compile(r"[\s*$\\{(:=]*(?:boxed\{)?[\s*$]*")
_ANOTHER_NUMBER = re.compile(  # right after the answer's number: a list or a range of numbers
    r"[*$}]*(?:\s+[A-Za-z]+){0,2}?\s*(?:,|;|\bor\b|\band\b|\bto\b|-|\u2013|\u2014|\u2212|~)[\s*\\{(]*[-+\u2212]?"
    r"[$\u20ac\u00a3\u00a5\u20b9]?\s?\.?\d", re.IGNORECASE)
_CORRECTION = re.compile(r"\b(?:wait|actually|sorry|oops|correction|I mean|mistake|on second thought|"
                         r"re-?check\w*|recalculat\w*|recomput\w*|let me (?:re)?(?:check|calculate|compute|verify))\b",
                         re.IGNORECASE)


class NumberTooLong(ValueError):
    pass


def to_fraction(match: re.Match) -> Fraction | None:
    """The exact value of a _NUMBER match; None for a zero denominator."""
    digits = match["num"].replace(",", "")
    if len(digits) + len(match["den"] or "") > MAX_DIGITS:
        raise NumberTooLong(f"number with {len(digits)} digits (limit {MAX_DIGITS})")
    value = Fraction(digits)
    if match["den"] is not None:
        den = Fraction(match["den"])
        if den == 0:
            return None
        value /= den
    negative = sum(s in ("-", "\u2212") for s in (match["sign"], match["sign2"])) % 2 == 1
    return -value if negative else value


def parse_number(text: str) -> Fraction | None:
    """The first number in `text` (used for ground truths)."""
    match = _NUMBER.search(text)
    return to_fraction(match) if match else None


def _number_after_last_anchor(text: str, anchor: re.Pattern) -> re.Match | None:
    """The number right after the last anchor that is followed by one."""
    found = None
    for anchor_match in anchor.finditer(text):
        start = _BETWEEN_ANCHOR_AND_NUMBER.match(text, anchor_match.end()).end()
        match = _NUMBER.match(text, start)
        if match:
            found = match
    return found


def hedge(text: str, match: re.Match, value: Fraction) -> str:
    """Why the anchored number `match` (of `value`) is not one answer, or "" (see the module's doc)."""
    if _ANOTHER_NUMBER.match(text, match.end()):
        return "several numbers after the answer phrase (a list or a range)"
    correction = _CORRECTION.search(text, match.end())
    later = last_match(_NUMBER, text[correction.end():]) if correction else None
    if later is not None and to_fraction(later) != value:
        return f"self-corrected after the answer ({correction.group(0)!r} ... {later.group(0).strip()})"
    return ""


def extract_answer(text: str, modes: Iterable[str] = EXTRACT_MODES) -> tuple[Fraction | None, str, str]:
    """(number, mode that found it, why it is no single answer or ""), or (None, "", "") when no mode finds one."""
    for mode in modes:
        match = last_match(_NUMBER, text) if mode == "last_number" else _number_after_last_anchor(text, _ANCHORS[mode])
        value = to_fraction(match) if match else None
        if value is not None:
            return value, mode, "" if mode == "last_number" else hedge(text, match, value)
    return None, "", ""


def ground_truth(row: dict) -> Fraction:
    if row.get("ground_truth") is not None:
        raw = row["ground_truth"]
        value = Fraction(raw) if isinstance(raw, int) else parse_number(str(raw))
        source = "ground_truth"
    elif isinstance(row.get("answer"), str) and "####" in row["answer"]:
        raw = row["answer"].rsplit("####", 1)[1]
        value, source = parse_number(raw), "answer's #### line"
    else:
        raise RowError(f"{row_label(row)}: numeric verifier needs 'ground_truth' or a GSM8K 'answer' "
                       f"with a '#### N' line (fields present: {sorted(row)})")
    if value is None:
        raise RowError(f"{row_label(row)}: {source} {str(raw)[:80]!r} is not a number")
    return value


def _show(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{float(value):g}"


class NumericVerifier(Verifier):
    name = "numeric"
    default_time_limit_s = 2.0

    def __init__(self, *, extract: list[str] | tuple[str, ...] = EXTRACT_MODES, rel_tol: float = 1e-6,
                 abs_tol: float = 1e-9, **base: Any):
        super().__init__(**base)
        unknown = [m for m in extract if m not in EXTRACT_MODES]
        if unknown or not extract:
            raise ValueError(f"numeric: extract must list modes from {EXTRACT_MODES}, got {list(extract)}")
        self.extract = tuple(extract)
        self.rel_tol = Fraction(rel_tol)
        self.abs_tol = Fraction(abs_tol)

    def check(self, text: str, row: dict) -> Verdict:
        expected = ground_truth(row)
        try:
            got, mode, hedged = extract_answer(text, self.extract)
        except NumberTooLong as e:
            return Verdict(0.0, f"answer refused: {e}")
        if got is None:
            return Verdict(0.0, f"no number found (modes: {', '.join(self.extract)})")
        if hedged:
            return Verdict(0.0, f"answer {_show(got)} refused: {hedged} ({mode})")
        if expected.denominator == 1 and got == expected or expected.denominator != 1 and \
                abs(got - expected) <= max(self.rel_tol * abs(expected), self.abs_tol):
            return Verdict(1.0, f"correct: {_show(got)} ({mode})")
        return Verdict(0.0, f"wrong: got {_show(got)} ({mode}), expected {_show(expected)}")


register_verifier("numeric", NumericVerifier)
register_verifier("gsm8k", NumericVerifier)
