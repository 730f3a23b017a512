"""Red team, channel side (issue 25, classes 2, 4, 6 and 8): what crosses between the program and the tests.

- An exception from the program fails the test that called it, whatever its class (a StopIteration must not
  end the trusted `map()` it was called from).
- Any plain value crosses, both ways: integers past Python's 4,300-digit str limit included.
- The trusted side's cost to decode and compare an answer is bounded and charged to the program: an answer
  near the size limit decodes in well under a second, hash-colliding values are refused before anything hashes
  them, and a row that broke its worker's chunk is not run again.
- Labels say whose fault a 0 is: a MemoryError the program raises is its own; tests that never call the
  program make the row bad data, not a failed program.
Every hostile case has an honest control beside it."""
import time

import pytest

from posttrain.rewards import RowError, Verdict, Verifier, get_verifier, register_verifier
from posttrain.rewards.guard import Worker

P = 2 ** 61 - 1  # ints k * P + c all hash to c


def _row(test: str, entry_point: str = "f") -> dict:
    return {"id": entry_point, "prompt": f"def {entry_point}(*args):\n    \"\"\"See the tests.\"\"\"\n",
            "entry_point": entry_point, "test": f"import itertools\n\ndef check(candidate):\n{test}\n"}


@pytest.fixture(scope="module")
def code():
    return get_verifier("code", timeout_s=5)


# Class 2: each assert passes when every call to the program stops early.
EARLY_STOP_TESTS = {
    "all_map": "    assert all(map(candidate, [0, 2, 4]))",
    "not_any_map": "    assert not any(map(candidate, [1, 3, 5]))",
    "filter": "    assert not list(filter(candidate, [1, 3]))",
    "zip_map": "    assert all(a == b for a, b in zip(map(candidate, [0, 1]), [True, False]))",
    "filterfalse": "    assert not list(itertools.filterfalse(candidate, [0, 2]))",
    "starmap": "    assert all(itertools.starmap(candidate, [(0,), (2,)]))",
    "sum_map": "    assert sum(map(candidate, [1, 3])) == 0",
    "dict_map": "    assert dict(zip([1, 3], map(candidate, [1, 3]))) in ({}, {1: False, 3: False})",
}
STOPS = {
    "stop_iteration": "def f(n):\n    raise StopIteration\n",
    "stop_iteration_value": "def f(n):\n    raise StopIteration(True)\n",
    "stop_async_iteration": "def f(n):\n    raise StopAsyncIteration\n",
    "generator_exit": "def f(n):\n    raise GeneratorExit\n",
}


@pytest.mark.parametrize("test", sorted(EARLY_STOP_TESTS))
def test_an_exception_from_the_program_fails_the_builtin_that_called_it(code, test):
    row = _row(EARLY_STOP_TESTS[test])
    for name, program in STOPS.items():
        verdict = code.verify_unguarded(program, row)
        assert verdict.score == 0.0, (test, name, verdict)
    assert code.verify_unguarded("def f(n):\n    return n % 2 == 0\n", row).score == 1.0  # the honest control


def test_the_exception_a_test_expects_still_counts(code):
    row = _row("    try:\n        candidate(-1)\n    except ValueError:\n        pass\n    else:\n        assert False\n"
               "    assert candidate(2) == 2")
    assert code.verify_unguarded("def f(n):\n    if n < 0:\n        raise ValueError(n)\n    return n\n", row).score == 1.0
    assert code.verify_unguarded("def f(n):\n    raise StopIteration\n", row).score == 0.0


# Class 4: big integers, both ways and nested.
BIG = {
    "answer": ("    assert candidate(5000) == 10 ** 5000", "def f(n):\n    return 10 ** n\n"),
    "argument": ("    assert candidate(10 ** 5000) == 10 ** 5000 + 1", "def f(n):\n    return n + 1\n"),
    "negative": ("    assert candidate(-(7 ** 9000)) == 7 ** 9000", "def f(n):\n    return -n\n"),
    "nested": ("    assert candidate(3) == {-(10 ** 5000): (10 ** 4400, [2 ** 20000], {3 ** 9000})}",
               "def f(n):\n    return {-(10 ** 5000): (10 ** 4400, [2 ** 20000], {3 ** 9000})}\n"),
    "factorial": ("    import math\n    assert candidate(3000) == math.factorial(3000)",
                  "import math\ndef f(n):\n    return math.prod(range(1, n + 1))\n"),
}


@pytest.mark.parametrize("case", sorted(BIG))
def test_integers_past_the_str_digit_limit_cross_the_channel(code, case):
    test, program = BIG[case]
    verdict = code.verify_unguarded(program, _row(test))
    assert verdict.score == 1.0, (case, verdict)
    wrong = code.verify_unguarded(program.replace("return ", "return 1 + "), _row(test))
    assert wrong.score == 0.0 and wrong.failure == "", (case, wrong)


# Class 6: what an answer costs the trusted side.
def _forged(container: str, count: int) -> str:
    """A program whose server answers with `count` hash-colliding ints in a set or dict literal written by hand,
    in the channel's own encoding (learnt from its `encode` of a two-item container, so the program never builds
    the set itself)."""
    return f"""
import sys
g = sys._getframe(0).f_back.f_globals
two = g['encode']({container % (1234567, 7654321)})
first, second = sorted((g['encode'](1234567), g['encode'](7654321)), key=two.index)
head, rest = two.split(first, 1)
between, tail = rest.split(second, 1)
crafted = head + between.join(g['encode'](k * {P} + 7) for k in range({count})) + tail
g['reply'] = lambda value: g['answer']('ok ' + crafted)
def f(*args):
    return 0
"""


COSTLY = {  # (test, program); each must score 0, labelled sandbox_limit, within a bounded trusted CPU time
    "colliding_set_literal": ("    assert candidate() == {7}", _forged("{%d, %d}", 30000)),
    "colliding_dict_literal": ("    assert candidate() == {7: 0}", _forged("{%d: 0, %d: 0}", 30000)),
    "colliding_list_hashed_by_tests": ("    assert set(candidate()) == {7}",
                                       f"def f():\n    return [k * {P} + 7 for k in range(30000)]\n"),
    "colliding_tuples": ("    assert len(set(candidate())) == 1",
                         f"def f():\n    return [(k * {P} + 7, 0) for k in range(30000)]\n"),
    "answer_over_the_size_limit": ("    assert len(candidate()) == 1", "def f():\n    return [0] * 1_400_000\n"),
}
CHEAP = {  # honest controls near the same sizes
    "big_list": ("    assert len(candidate(300000)) == 300000", "def f(n):\n    return list(range(n))\n"),
    "big_set": ("    assert len(set(candidate(60000))) == 60000", "def f(n):\n    return set(range(n))\n"),
    "repeated_values": ("    assert set(candidate(100000)) == {0}", "def f(n):\n    return [0] * n\n"),
    "some_collisions": ("    assert len(set(candidate())) == 20",
                        f"def f():\n    return [k * {P} + 7 for k in range(20)] * 1000\n"),
    "long_string": ("    assert len(candidate(500000)) == 500000", "def f(n):\n    return 'x' * n\n"),
}


@pytest.mark.parametrize("case", sorted(COSTLY) + sorted(CHEAP))
def test_an_answer_costs_the_trusted_side_little(code, case):
    test, program = COSTLY.get(case) or CHEAP[case]
    start = time.process_time()
    verdict = code.verify_unguarded(program, _row(test))
    trusted_cpu = time.process_time() - start
    if case in COSTLY:
        assert (verdict.score, verdict.failure) == (0.0, "sandbox_limit"), (case, verdict)
    else:
        assert verdict.score == 1.0, (case, verdict)
    assert trusted_cpu < 1.0, (case, trusted_cpu, verdict)


class _Counted(Verifier):
    """Appends each text it checks to the row's file; "hang" then waits forever without using CPU, "c_loop" spins
    in one C call that no signal handler interrupts."""
    name = "test_redteam_counted"

    def check(self, text, row):
        with open(row["log"], "a") as f:
            f.write(text + "\n")
        if text == "hang":
            time.sleep(600)
        if text == "c_loop":
            sum(range(10 ** 12))
        return Verdict(1.0, text)


register_verifier("test_redteam_counted", _Counted, time_limit_s=0.3)


def test_a_row_that_broke_its_chunk_is_not_run_again(tmp_path):
    verifier, worker, log = get_verifier("test_redteam_counted"), Worker(), tmp_path / "log"
    try:
        texts = ["a", "b", "hang", "c", "c_loop", "d"]
        outcomes = worker.run(verifier.verify_unguarded, [((t, {"log": str(log)}), 0.3) for t in texts])
    finally:
        worker.stop()
    assert [o.status for o in outcomes] == ["ok", "ok", "timeout", "ok", "timeout", "ok"]
    assert "without using CPU" in outcomes[2].message and "no signal could interrupt" in outcomes[4].message
    ran = log.read_text().split()
    assert ran.count("hang") == 1 and ran.count("c_loop") == 1 and set(ran) == set(texts), ran


# Class 8: labels and messages.
def test_a_memory_error_the_program_raises_is_its_own_fault(code):
    row = _row("    assert candidate(2) == 4")
    raised = code.verify_unguarded("def f(n):\n    raise MemoryError('not really')\n", row)
    assert (raised.score, raised.failure) == (0.0, ""), raised
    assert "MemoryError" in raised.reason
    assert code.verify_unguarded("def f(n):\n    return n * n\n", row).score == 1.0


@pytest.mark.parametrize("row", [
    {"id": "mbpp-no-call", "test_list": ["assert True", "assert 1 + 1 == 2"]},
    {"id": "he-no-call", "prompt": "def f(n):\n    \"\"\"Doc.\"\"\"\n", "entry_point": "f",
     "test": "def check(candidate):\n    assert True\n"},
    {"id": "he-no-call-but-looks", "prompt": "def f(n):\n    \"\"\"Doc.\"\"\"\n", "entry_point": "f",
     "test": "def check(candidate):\n    assert candidate is not None\n"},
])
def test_tests_that_never_call_the_program_are_a_bad_row(code, row):
    with pytest.raises(RowError, match="never call"):
        code.verify_unguarded("def f(n):\n    return n\n", row)


def test_no_zero_says_tests_passed(code):
    rows = [_row("    assert candidate(1) == 1"), {"id": "m", "test_list": ["assert f(1) == 1"]}]
    for program in ("def f(n):\n    return 2\n", "def f(n):\n    raise MemoryError\n", "import os\nos._exit(0)\n", ""):
        for row in rows:
            verdict = code.verify_unguarded(program, row)
            assert verdict.score == 0.0 and "tests passed" not in verdict.reason, (program, verdict)
