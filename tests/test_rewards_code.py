"""Code verifier and its sandbox: completion shapes, isolation properties, real HumanEval and MBPP."""
import os
import socket
import tempfile
import threading

import pytest

from posttrain.data import read_rows, shared_file
from posttrain.rewards import RowError, get_verifier, score_rows
from posttrain.rewards.code_exec import split_row
from posttrain.rewards.sandbox import run_python, sandbox_kind

ADD = {"id": "add", "prompt": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n", "entry_point": "add",
       "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}


@pytest.mark.parametrize("completion, score", [
    ("    return a + b\n", 1.0),
    ("def add(a, b):\n    return a + b\n", 1.0),
    ("Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nExample:\n```python\nprint(add(1, 2))\n```", 1.0),
    ("```\n    return a + b\n```", 1.0),
    ("    return a - b\n", 0.0),
    ("", 0.0),
    ("def add(a, b) return", 0.0),
])
def test_humaneval_completion_shapes(completion, score):
    assert get_verifier("code")(completion, ADD).score == score


def test_mbpp_row_and_bad_rows():
    row = {"test_list": ["assert sq(3) == 9"], "test_setup_code": ""}
    assert get_verifier("code")("def sq(x):\n    return x * x", row).score == 1.0
    assert get_verifier("code")("def sq(x):\n    return x + x", row).reason.startswith("tests failed: AssertionError")
    with pytest.raises(RowError, match="HumanEval fields"):
        split_row("x", {"id": 3})


def test_sandbox_limits_time_memory_processes_and_files():
    # the CPU limit must fire, however busy the machine: a wide wall backstop (the next line tests that one)
    assert run_python("while True: pass", timeout_s=1, wall_s=30).reason == "CPU time limit exceeded"
    assert run_python("import time; time.sleep(60)", timeout_s=1, wall_s=1).reason.startswith("timed out after 1s")
    assert "MemoryError" in run_python("x = bytearray(4 << 30)", memory_mb=256).reason
    assert "Resource temporarily unavailable" in run_python("import os\nwhile True: os.fork()").reason
    assert "File too large" in run_python("open('f', 'w').write('x' * (32 << 20))").reason
    assert run_python("print('ok')").passed


def test_sandbox_has_a_clean_environment_and_removes_its_directory():
    os.environ["POSTTRAIN_SECRET_FOR_TEST"] = "leak"
    try:
        result = run_python("import os\nassert 'POSTTRAIN_SECRET_FOR_TEST' not in os.environ, os.environ\n"
                            "assert os.getcwd() == os.environ['TMPDIR']\nopen('scratch.txt', 'w').write('x')")
    finally:
        del os.environ["POSTTRAIN_SECRET_FOR_TEST"]
    assert result.passed, result.reason
    assert not [p for p in os.listdir(tempfile.gettempdir()) if p.startswith("posttrain-sandbox-")]


def test_sandbox_has_no_network():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept(), daemon=True).start()
    try:
        result = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
    finally:
        server.close()
    assert not result.passed and "Operation not permitted" in result.reason, result.reason  # no socket at all


@pytest.mark.skipif(os.getuid() != 0, reason="the privilege drop applies when running as root")
def test_sandbox_cannot_write_outside_its_directory_as_root():
    target = os.path.join(os.path.dirname(__file__), "sandbox_must_not_write_here.txt")
    reason = run_python(f"open({target!r}, 'w').write('x')").reason
    assert "Permission denied" in reason or "No such file" in reason, reason
    assert not os.path.exists(target)


def test_humaneval_canonical_solutions_pass_and_empty_bodies_fail():
    rows = read_rows(shared_file("humaneval/HumanEval.jsonl.gz"))
    canonical = score_rows([r["canonical_solution"] for r in rows], rows, "code")
    assert [r["task_id"] for r, v in zip(rows, canonical) if v.score != 1.0] == []
    empty = score_rows(["    pass\n"] * len(rows), rows, "code", max_failure_fraction=0.0)
    assert [r["task_id"] for r, v in zip(rows, empty) if v.score != 0.0] == []


@pytest.mark.slow
def test_mbpp_reference_code_passes_its_tests_and_the_next_tasks_code_fails_them():
    rows = read_rows(shared_file("mbpp/mbpp.jsonl"))  # all 974: about 40 s with the pool of 2
    verdicts = score_rows([r["code"] for r in rows], rows, "code")
    assert [(r["task_id"], v.reason) for r, v in zip(rows, verdicts) if v.score != 1.0] == []
    shifted = score_rows([r["code"] for r in rows[1:] + rows[:1]], rows, "code", max_failure_fraction=1.0)
    assert [r["task_id"] for r, v in zip(rows, shifted) if v.score != 0.0] == []
