"""The verifier contract: `Verdict`, the `Verifier` base class, and turning a completion into text.

A verifier's `check(text, row)` holds the task logic. `Verifier.__call__` adds what every verifier
needs around it: accepting a string or a chat message list, rejecting absurdly long input before any
parsing, and running the check under a CPU-time limit (with a wall-clock backstop) in a guarded worker process.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("posttrain.rewards")

DEFAULT_MAX_CHARS = 50_000


FAILURES = ("timeout", "crash", "sandbox_limit")  # what RLVR logs the share of, per verifier


@dataclass(frozen=True)
class Verdict:
    score: float  # in [0, 1]; 1 = verified correct (shaping terms may give fractions)
    reason: str  # short, for logging
    # "" when the check reached a verdict. Else why not: "timeout" (over its CPU limit or wall backstop),
    # "crash" (the verifier raised or its worker died), "sandbox_limit" (the program hit a sandbox limit),
    # "bad_row" (the row's own data is unusable). The score is then 0.
    failure: str = ""


def failed(status: str, message: str, row_error: bool = False, who: str = "") -> Verdict:
    """The zero Verdict of a guarded call that did not finish ("timeout" | "crashed" | "error")."""
    kind = "bad_row" if row_error else "timeout" if status == "timeout" else "crash"
    return Verdict(0.0, f"{who} {status}: {message}".lstrip(), kind)


class RowError(ValueError):
    """The row lacks a field the verifier needs, or the field is malformed: a data problem to fix,
    never a judgement on the model's output."""


def row_label(row: dict) -> str:
    return f"row id={row.get('id')!r}"


def require_field(row: dict, *names: str) -> Any:
    """The first of `names` present in the row (not None), or a RowError naming them."""
    for name in names:
        if row.get(name) is not None:
            return row[name]
    raise RowError(f"{row_label(row)} has no {' or '.join(repr(n) for n in names)} field "
                   f"(fields present: {sorted(row)})")


def last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    """The last non-overlapping match, found in one linear pass."""
    last = None
    for last in pattern.finditer(text):
        pass
    return last


def _message_content(message: Any) -> Any:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # multimodal-style parts: keep the text parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content


def completion_text(completion: Any, max_chars: int) -> tuple[str | None, str]:
    """(text, "") for a usable completion, or (None, reason) for one to score 0.

    Accepts a str, bytes (invalid UTF-8 is replaced, not fatal), a chat message dict, or a message
    list as TRL's conversational GRPO passes it (the last assistant message is used)."""
    if isinstance(completion, (bytes, bytearray)):
        completion = bytes(completion).decode("utf-8", errors="replace")
    elif isinstance(completion, dict):
        completion = _message_content(completion)
    elif isinstance(completion, (list, tuple)):
        assistant = [m for m in completion if isinstance(m, dict) and m.get("role") == "assistant"]
        completion = _message_content((assistant or list(completion) or [None])[-1])
    if not isinstance(completion, str):
        return None, f"completion is {type(completion).__name__}, expected a str or chat messages"
    if len(completion) > max_chars:
        return None, f"completion has {len(completion):,} chars, over the max_chars={max_chars:,} limit"
    return completion, ""


class Verifier:
    """Base class. Subclasses set `name` and implement `check(text, row) -> Verdict`.

    Options every verifier takes: `time_limit_s` (CPU-time limit of one call; guard.py adds a wall backstop) and
    `max_chars` (longer completions score 0 without being parsed)."""

    name = "verifier"
    default_time_limit_s = 5.0

    def __init__(self, *, time_limit_s: float | None = None, max_chars: int = DEFAULT_MAX_CHARS):
        self.time_limit_s = float(time_limit_s if time_limit_s is not None else self.default_time_limit_s)
        if self.time_limit_s <= 0:
            raise ValueError(f"{self.name}: time_limit_s must be > 0, got {time_limit_s}")
        self.max_chars = int(max_chars)

    def check(self, text: str, row: dict) -> Verdict:
        raise NotImplementedError

    def verify_unguarded(self, completion: Any, row: dict) -> Verdict:
        """The check without the time limit; raises on verifier bugs and RowError on bad rows."""
        text, problem = completion_text(completion, self.max_chars)
        if text is None:
            return Verdict(0.0, problem)
        return self.check(text, row)

    def __call__(self, completion: Any, row: dict) -> Verdict:
        from posttrain.rewards.guard import run_guarded

        outcome = run_guarded(self.verify_unguarded, (completion, row), self.time_limit_s)
        if outcome.status == "ok":
            return outcome.value
        if outcome.row_error:
            raise RowError(outcome.message)
        log.warning("%s: verifier %s %s: %s", row_label(row), self.name, outcome.status, outcome.message)
        return failed(outcome.status, outcome.message)

    def __repr__(self) -> str:
        return f"<verifier {self.name}>"
