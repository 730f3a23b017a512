"""The `code` verifier: the row's tests, run here, call the completion's functions served from the sandbox.

Row fields:
- HumanEval: `prompt` (signature + docstring), `test` (defines `check(candidate)`), `entry_point`. The
  program is `prompt + completion`; the completion may continue the prompt (just the body) or give the
  whole function (then it follows the prompt and redefines it, so the prompt's imports and helpers stay).
- MBPP: `test_list` (assert lines), optional `test_imports` and `test_setup_code`.

Why no program can earn reward without computing the right values:
- The program runs in the sandbox (sandbox.py) as a server (remote.py). It never receives the tests: not
  as a file, argument, stdin or environment variable, and under bubblewrap it cannot see this process in
  /proc (in the rlimit fallback it runs as another user, so it cannot read this process's memory).
- The tests run in this trusted process (the verifier's guarded worker, never the trainer), against
  stand-ins: `candidate` (HumanEval) or the names the asserts read (MBPP) are handles whose calls send
  the arguments as plain literals and decode the answer with `ast.literal_eval`. So every value the tests
  compare is a plain builtin int, str, list, ... that this process built itself: no `__eq__` that always
  says yes, no int subclass, no patched builtin, `operator` or `math` (they live in the other process).
- The verdict is computed here, from the tests finishing without an exception (any exception from the
  program fails the test that called it: remote._exception), and from the session never having broken (an
  exit, a crash, a malformed, oversized or costly answer, a CPU-limit kill, the backstop on blocked time). No
  token, exit code or output of the program counts. Tests that never call the program are a bad row.
- The only values of the tests that reach the program are the arguments of its own function calls.
  Builtins the tests use are never taken from the program (it could otherwise define `set` and be
  handed the expected value), except when the tests call nothing but a builtin name (MBPP 126 tests its
  own `sum`). MBPP's test_setup_code runs in the sandbox, after the program: it builds inputs from the
  program's classes (tasks 367, 927) and holds no expected value. A bare stdlib module the asserts use
  (MBPP 596's `sys`) is imported here.

Code inside ``` fences is used when present (the first block that defines the entry point, else the
first block). Options: `timeout_s` (10 CPU seconds for the whole program; MBPP's reference for task 123
alone needs 4.1 s; the trusted side's CPU for the program's answers is limited to as much), `wall_factor`
(3: the program may be blocked, neither running nor waiting for a CPU, timeout_s x wall_factor seconds, so no
load changes a verdict), `memory_mb` (1024); the verifier's own time limit defaults to timeout_s x
wall_factor + 5 s. The sandboxed program sees only the standard library; a result that is not plain data
(a generator, an object) can be called or passed back to it but never compared. The sandbox's guarantees
and their tests: docs/rewards.md.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

from posttrain.rewards.core import RowError, Verdict, Verifier, row_label
from posttrain.rewards.guard import CpuTimeout, cpu_limit
from posttrain.rewards.registry import register_verifier
from posttrain.rewards.remote import SERVER, Session, encode
from posttrain.rewards.sandbox import describe_exit, sandboxed


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


def _free_names(code: str) -> list[str]:
    """Names the test code reads without defining them, builtins excepted: the program must not replace a
    builtin the tests use (`set`, `sorted`) and so see expected values. Only when the tests call nothing but
    builtin names is the called one the function under test (MBPP 126 defines and tests `sum`)."""
    tree = ast.parse(code)
    stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    stored |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - stored
    free = sorted(n for n in loaded if not hasattr(builtins, n))
    called = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    return free or sorted({called[0]} if called else set())


def split_row(text: str, row: dict) -> tuple[str, str, dict, list[str], str]:
    """(program, setup, trusted namespace, names to fetch from the program, test code) for a row.

    The program (the solution; for HumanEval after the prompt) and MBPP's test_setup_code (it builds
    inputs from the solution's classes, and holds no expected value) run in the sandbox. The test code
    (HumanEval's `check`, MBPP's asserts) and MBPP's test_imports run here, in the trusted namespace."""
    if row.get("test") is not None and row.get("entry_point"):
        entry_point, prompt = row["entry_point"], row.get("prompt", "")
        code = extract_code(text, entry_point)
        program = f"{prompt}\n{code}" if defines(code, entry_point) else prompt + code
        trusted = _exec_trusted(_complete(prompt), {})  # the prompt's imports and helpers, which `check` may use
        return program, "", trusted, [entry_point], f"{row['test']}\n\ncheck({entry_point})\n"
    if row.get("test_list"):
        tests = "\n".join(row["test_list"]) + "\n"
        trusted = _exec_trusted("\n".join(row.get("test_imports") or []), {})
        names = [n for n in _free_names(tests) if n not in trusted]
        for module in [n for n in names if n in sys.stdlib_module_names]:  # e.g. `sys.getsizeof` in task 596
            trusted[module] = importlib.import_module(module)
        names = [n for n in names if n not in trusted]
        return extract_code(text, None), row.get("test_setup_code") or "", trusted, names, tests
    raise RowError(f"{row_label(row)}: code verifier needs HumanEval fields (prompt, test, entry_point) "
                   f"or MBPP's test_list (fields present: {sorted(row)})")


def _complete(prompt: str) -> str:
    """The prompt as a module: a bare signature (no docstring body) gets `pass`."""
    try:
        compile(prompt, "<prompt>", "exec")
        return prompt
    except SyntaxError:
        return prompt + "    pass\n"


def _exec_trusted(code: str, namespace: dict) -> dict:
    try:
        exec(compile(code, "<trusted>", "exec"), namespace)
    except Exception as e:
        raise RowError(f"the row's own test code does not run: {type(e).__name__}: {e}") from None
    return namespace


EXIT_LIMITS = ("CPU time limit exceeded", "file size limit exceeded", "killed by SIGKILL")  # sandbox.describe_exit's


def run_tests(program: str, setup: str, trusted: dict, names: list[str], tests: str, *, cpu_s: float,
              stall_s: float, memory_mb: int) -> tuple[bool, str, str]:
    """(passed, reason, failure label) for the tests against the program served from the sandbox. The limits:
    CPU time, the backstop on blocked time, memory, file size, answer size, and the CPU this process spends on
    the program's answers (reading and comparing them: at most cpu_s, charged to the program as a limit)."""
    to_server, server_in = os.pipe()
    server_out, from_server = os.pipe()
    with tempfile.TemporaryFile() as stderr, \
            sandboxed(SERVER, [str(to_server), str(from_server)], cpu_s=cpu_s, memory_mb=memory_mb,
                      pass_fds=(to_server, from_server), stderr=stderr) as proc:
        for fd in (to_server, from_server):
            os.close(fd)
        session = Session(proc, server_in, server_out, stall_s, answer_cpu_s=cpu_s)
        start = time.process_time()
        try:
            session.send(encode((program, setup)))
            if session.answer() != "ready":  # or the program's own error, raised here
                raise session.fail("no ready signal")
            for name in names:
                trusted[name] = session.request(("get", name))
            with cpu_limit(cpu_s):
                exec(compile(tests, "<tests>", "exec"), trusted)
            passed, reason, label = session.failure is None, "tests passed", ""
        except CpuTimeout:
            if time.process_time() - start < cpu_s:
                raise  # this verifier's own time limit (guard.py): a timeout, not a verdict
            passed, reason, label = False, f"the tests spent over {cpu_s:g}s of CPU on the program's answers", "sandbox_limit"
        except BaseException as e:  # noqa: BLE001 - whatever the program made the tests raise is a failure
            # A MemoryError raised here, not by the program, is this process running out on its answers.
            ours = isinstance(e, MemoryError) and not getattr(e, "from_program", False)
            passed, reason, label = False, f"{type(e).__name__}: {str(e)[:200]}", "sandbox_limit" if ours else ""
        finally:
            for fd in (server_in, server_out):
                os.close(fd)
        if session.failure:
            status = _exit_status(proc, stderr)
            passed, reason = False, f"{session.failure} ({status})"
            label = "sandbox_limit" if session.limit or status in EXIT_LIMITS else ""
        setup_error = getattr(proc, "setup_error", "")
        if setup_error:  # the sandbox, not the program, failed
            return False, f"the sandbox could not run the program: {setup_error}", "crash"
    if passed and session.calls == 0:
        raise RowError("the row's tests never call the program's functions, so they cannot tell a right program "
                       f"from a wrong one (tests: {tests[:200]!r})")
    return passed, reason, label


def _exit_status(proc, stderr) -> str:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)
    stderr.seek(0)
    lines = stderr.read()[-4096:].decode("utf-8", errors="replace").strip().splitlines()
    return describe_exit(proc.returncode, lines[-1][:200] if lines else "")


class CodeVerifier(Verifier):
    name = "code"

    def __init__(self, *, timeout_s: float = 10.0, wall_factor: float = 3.0, memory_mb: int = 1024, **base: Any):
        base.setdefault("time_limit_s", timeout_s * wall_factor + 5.0)
        super().__init__(**base)
        self.timeout_s, self.stall_s, self.memory_mb = timeout_s, timeout_s * wall_factor, memory_mb

    def check(self, text: str, row: dict) -> Verdict:
        passed, reason, label = run_tests(*split_row(text, row), cpu_s=self.timeout_s, stall_s=self.stall_s,
                                          memory_mb=self.memory_mb)
        if passed:
            return Verdict(1.0, reason)
        if label == "crash":
            return Verdict(0.0, reason, label)
        return Verdict(0.0, f"tests failed: {reason}", label)


register_verifier("code", CodeVerifier)
