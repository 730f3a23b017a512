"""The `ifeval` verifier (strict) and `ifeval_loose`, plus per-instruction results for the eval harness.

Row fields, as in ../shared/data/ifeval/input_data.jsonl:
- `instruction_id_list`: instruction ids, e.g. ["punctuation:no_comma", "length_constraints:number_words"];
- `kwargs`: a list parallel to it, one dict of arguments per instruction ({} for none; None values and
  other falsy values are ignored, as the reference does).

Or, as in the IFEval rows of Tülu 3's RLVR mixture, `ground_truth`: open-instruct's JSON
`{"func_name": ..., <arguments>}`, scored by open-instruct's semantics (ifeval_functions.py), one instruction
per row, on the text after the thinking section.

The Verdict is prompt-level (1 when every instruction is followed, else 0). `ifeval_details` gives the
per-instruction booleans, from which instruction-level accuracy is the fraction of True.

Loose mode (option `loose=True`, or the name `ifeval_loose`) counts an instruction as followed when any
of the reference's eight variants of the response follows it: the response itself, without its first
line, without its last line, without both, and each of those with every "*" removed.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from posttrain.rewards.core import RowError, Verdict, Verifier, completion_text, require_field, row_label
from posttrain.rewards.guard import run_guarded
from posttrain.rewards.ifeval_checks import CHECKERS
from posttrain.rewards.ifeval_functions import constraint, is_function_row, remove_thinking_section
from posttrain.rewards.registry import register_verifier


def loose_variants(response: str) -> list[str]:
    lines = response.split("\n")
    trimmed = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return trimmed + [t.replace("*", "") for t in trimmed]


def instructions(row: dict) -> list[tuple[str, Callable[[str], bool]]]:
    """(name, check(text)) per instruction of the row, in order."""
    if is_function_row(row):
        return [constraint(row)]
    ids = require_field(row, "instruction_id_list")
    kwargs = row.get("kwargs") or [{}] * len(ids)
    if len(kwargs) != len(ids):
        raise RowError(f"{row_label(row)}: {len(ids)} instruction ids but {len(kwargs)} kwargs dicts")
    unknown = [i for i in ids if i not in CHECKERS]
    if unknown:
        raise RowError(f"{row_label(row)}: unknown IFEval instruction ids {unknown}")
    return [(i, functools.partial(CHECKERS[i], kwargs=kw or {})) for i, kw in zip(ids, kwargs)]


def instruction_results(text: str, row: dict, loose: bool) -> list[bool]:
    if is_function_row(row):
        text = remove_thinking_section(text)
    candidates = loose_variants(text) if loose else [text]
    # An empty answer follows nothing (open-instruct would pass it for e.g. validate_lowercase).
    return [any(c.strip() and check(c) for c in candidates) for _, check in instructions(row)]


class IfevalVerifier(Verifier):
    name = "ifeval"
    default_time_limit_s = 5.0

    def __init__(self, *, loose: bool = False, **base: Any):
        super().__init__(**base)
        self.loose = loose

    def check(self, text: str, row: dict) -> Verdict:
        results = instruction_results(text, row, self.loose)
        if not results:  # nothing to follow is nothing followed (open-instruct's regression test, its PR #1655)
            return Verdict(0.0, "the row lists no instructions")
        failed = [i for (i, _), ok in zip(instructions(row), results) if not ok]
        summary = f"{len(results) - len(failed)}/{len(results)} instructions followed ({'loose' if self.loose else 'strict'})"
        return Verdict(float(not failed), summary + (f"; failed: {', '.join(failed)}" if failed else ""))

    def details_unguarded(self, completion: Any, row: dict) -> list[bool]:
        text, _ = completion_text(completion, self.max_chars)
        return [False] * len(instructions(row)) if text is None else instruction_results(text, row, self.loose)


def ifeval_details(completion: Any, row: dict, loose: bool = False) -> list[bool]:
    """Per-instruction results, parallel to row["instruction_id_list"]; all False for an unusable
    completion or when the check overruns its time limit."""
    verifier = IfevalVerifier(loose=loose)
    outcome = run_guarded(verifier.details_unguarded, (completion, row), verifier.time_limit_s)
    if outcome.row_error:
        raise RowError(outcome.message)
    return outcome.value if outcome.ok else [False] * len(instructions(row))


register_verifier("ifeval", IfevalVerifier)
register_verifier("ifeval_loose", IfevalVerifier, loose=True)
