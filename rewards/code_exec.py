"""The `code` verifier: run the completion's code against the row's tests in the sandbox.

Row fields:
- HumanEval: `prompt` (signature + docstring), `test` (defines `check(candidate)`), `entry_point`;
  the program is `prompt + completion + test + check(entry_point)`. The completion may continue the
  prompt (just the body) or give the whole function (then it follows the prompt and redefines it, so
  the prompt's imports and helpers stay available).
- MBPP: `test_list` (assert lines), optional `test_setup_code`; the program is code + setup + asserts
  (setup after the code: MBPP's setup builds objects of classes the solution defines).

Code inside ``` fences is used when present (the first block that defines the entry point, else the
first block). Options: `timeout_s` (10, wall clock per run; MBPP's reference for task 123 alone
needs 3.5 s of CPU), `memory_mb` (1024); the verifier's own time
limit defaults to timeout_s + 2. The sandboxed program sees only the standard library.
"""
from __future__ import annotations

import re
from typing import Any

from posttrain.rewards.core import RowError, Verdict, Verifier, row_label
from posttrain.rewards.registry import register_verifier
from posttrain.rewards.sandbox import run_python


def fenced_blocks(text: str) -> list[str]:
    """Contents of ``` fenced blocks (an unclosed last fence runs to the end), language tag removed."""
    parts = text.split("```")
    blocks = []
    for inside in parts[1::2]:
        first_line, _, rest = inside.partition("\n")
        blocks.append(rest if re.fullmatch(r"[\w+.-]*\s*", first_line) else inside)
    return blocks


def defines(code: str, name: str) -> bool:
    return re.search(rf"^def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def extract_code(text: str, entry_point: str | None) -> str:
    blocks = fenced_blocks(text)
    if not blocks:
        return text
    for block in blocks:
        if entry_point and defines(block, entry_point):
            return block
    return blocks[0]


def build_program(text: str, row: dict) -> str:
    if row.get("test") is not None and row.get("entry_point"):
        entry_point = row["entry_point"]
        code = extract_code(text, entry_point)
        prompt = row.get("prompt", "")
        body = f"{prompt}\n{code}" if defines(code, entry_point) else prompt + code
        return f"{body}\n\n{row['test']}\n\ncheck({entry_point})\n"
    if row.get("test_list"):
        code = extract_code(text, None)
        return "\n".join([code, "", row.get("test_setup_code") or "", *row["test_list"], ""])
    raise RowError(f"{row_label(row)}: code verifier needs HumanEval fields (prompt, test, entry_point) "
                   f"or MBPP's test_list (fields present: {sorted(row)})")


class CodeVerifier(Verifier):
    name = "code"

    def __init__(self, *, timeout_s: float = 10.0, memory_mb: int = 1024, **base: Any):
        base.setdefault("time_limit_s", timeout_s + 2.0)
        super().__init__(**base)
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb

    def check(self, text: str, row: dict) -> Verdict:
        result = run_python(build_program(text, row), timeout_s=self.timeout_s, memory_mb=self.memory_mb)
        return Verdict(1.0, "tests passed") if result.passed else Verdict(0.0, f"tests failed: {result.reason}")


register_verifier("code", CodeVerifier)
