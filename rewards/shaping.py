"""Shaping terms, meant to be combined with a correctness verifier through `combine` / "weighted".

- `format`: 1 when the required answer format is present. Option `require`: "answer_is" (a number after
  "The answer is"), "hashes" (a number after ####), "boxed" (a closed \\boxed{...}); or `pattern`, a
  regex from the recipe (never from the model).
- `eos`: 1 when the completion ended with EOS rather than hitting the length limit. With option `eos_token`
  (e.g. "<|im_end|>") the text must end with it, whatever the row says; without it, reads row["finish_reason"]
  ("stop"/"eos" vs "length", as generation servers report it). RLVR refuses an eos term (use its eos_penalty).
- `length`: 1 up to `budget_chars` characters, falling linearly to 0 at `zero_at_chars`.
"""
from __future__ import annotations

import re
from typing import Any

from posttrain.rewards.core import RowError, Verdict, Verifier, row_label
from posttrain.rewards.math_answer import last_boxed
from posttrain.rewards.numeric import NumberTooLong, extract_answer
from posttrain.rewards.registry import register_verifier

FORMATS = ("answer_is", "hashes", "boxed")


def _has_format(text: str, require: str) -> bool:
    if require == "boxed":
        return last_boxed(text) is not None
    try:
        return extract_answer(text, [require])[0] is not None
    except NumberTooLong:
        return True  # the format is there; correctness is the other term's business


class FormatVerifier(Verifier):
    name = "format"
    default_time_limit_s = 2.0

    def __init__(self, *, require: str = "answer_is", pattern: str | None = None, **base: Any):
        super().__init__(**base)
        if require not in FORMATS:
            raise ValueError(f"format: require must be one of {FORMATS}, got {require!r}")
        self.require = require
        self.pattern = re.compile(pattern) if pattern else None

    def check(self, text: str, row: dict) -> Verdict:
        if self.pattern is not None:
            found, what = self.pattern.search(text) is not None, f"pattern {self.pattern.pattern!r}"
        else:
            found, what = _has_format(text, self.require), f"{self.require} format"
        return Verdict(float(found), f"{what} {'present' if found else 'missing'}")


class EosVerifier(Verifier):
    name = "eos"
    default_time_limit_s = 2.0

    def __init__(self, *, eos_token: str | None = None, **base: Any):
        super().__init__(**base)
        self.eos_token = eos_token

    def check(self, text: str, row: dict) -> Verdict:
        reason = row.get("finish_reason")
        if reason is not None and self.eos_token is None:  # the eos_token option, when given, wins over the row
            ended = reason in ("stop", "eos")
            return Verdict(float(ended), f"finish_reason={reason}")
        if self.eos_token is None:
            raise RowError(f"{row_label(row)}: eos verifier needs row['finish_reason'] or the eos_token option")
        ended = text.rstrip().endswith(self.eos_token)
        return Verdict(float(ended), f"{'ends' if ended else 'does not end'} with {self.eos_token!r}")


class LengthVerifier(Verifier):
    name = "length"
    default_time_limit_s = 2.0

    def __init__(self, *, budget_chars: int = 2000, zero_at_chars: int = 4000, **base: Any):
        super().__init__(**base)
        if not 0 < budget_chars < zero_at_chars:
            raise ValueError(f"length: need 0 < budget_chars < zero_at_chars, got {budget_chars}, {zero_at_chars}")
        self.budget_chars = budget_chars
        self.zero_at_chars = zero_at_chars

    def check(self, text: str, row: dict) -> Verdict:
        over = max(0, len(text) - self.budget_chars)
        score = max(0.0, 1.0 - over / (self.zero_at_chars - self.budget_chars))
        return Verdict(score, f"{len(text)} chars (budget {self.budget_chars}, zero at {self.zero_at_chars})")


register_verifier("format", FormatVerifier)
register_verifier("eos", EosVerifier)
register_verifier("length", LengthVerifier)
