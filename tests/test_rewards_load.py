"""Same verdict on a busy machine: numeric formats, gold parsing that never caches a failure, MATH-500
and MBPP's slowest task agreeing with their gold answers while another process keeps a core busy, and honest
programs near their CPU limit passing with every core saturated (issue 25, class 5)."""
import os
import re
import subprocess
import time

import pytest

from posttrain.data import read_rows, shared_file
from posttrain.rewards import RowError, get_verifier, score_rows
from posttrain.rewards import math_answer
from posttrain.rewards.math_answer import extract_final_answer


@pytest.mark.parametrize("text, truth, score", [
    ("The answer is 1e3", "1000", 1.0), ("The answer is 1,000.5.", "1000.5", 1.0), ("The answer is -0.50", "-1/2", 1.0),
    ("The answer is 2.5E-3.", "0.0025", 1.0), ("The answer is 3/4", "0.75", 1.0), ("The answer is 50%", "50", 1.0),
    ("The answer is 1e3", "1", 0.0),
])
def test_numeric_reads_exponents_separators_and_signs(text, truth, score):
    assert get_verifier("numeric")(text, {"ground_truth": truth}).score == score


def test_gold_with_newline_and_text_units_parses():
    verifier = get_verifier("math")
    assert verifier.verify_unguarded("\\boxed{90}", {"answer": "90\\text{ square\nunits}"}).score == 1.0


def test_a_gold_parse_failure_is_not_cached(monkeypatch):
    import math_verify

    real, calls = math_verify.parse, []

    def flaky(*args, **kwargs):  # fails the first time, as a timeout on a busy machine would
        calls.append(1)
        return [] if len(calls) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(math_verify, "parse", flaky)
    math_answer.parse_gold.cache_clear()
    with pytest.raises(RowError):
        math_answer.parse_gold("\\frac{7}{9}")
    assert math_answer.parse_gold("\\frac{7}{9}")  # parsed again, not the remembered failure
    assert math_answer.equivalent("\\frac{7}{9}", "7/9")[0]


@pytest.mark.parametrize("answer, gold, score", [("7", "8", 0.0), ("007", "7", 1.0), ("-0", "0", 1.0), ("7", "7.0", 1.0)])
def test_plain_integers_are_compared_by_value(answer, gold, score):
    assert get_verifier("math").verify_unguarded(f"\\boxed{{{answer}}}", {"answer": gold}).score == score


@pytest.fixture
def busy_core():
    hog = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
    yield
    hog.kill()
    hog.wait()


_INT = re.compile(r"-?\d+")
_FRAC = re.compile(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}")


def restate(answer: str, i: int) -> str:
    r"""The answer written another way, equal in value, so math-verify's parser decides (not the shortcut for
    the gold answer's own text): 7 -> 7.0 or {7}, \frac{1}{2} -> 1/2 or \dfrac{1}{2}, thousands separators
    dropped, \left( ... \right] around intervals, a unit's number given another digit, a space after
    \text, else braces around it (p - q -> {p - q})."""
    a = " ".join(answer.split())
    a = a.replace(",\\! ", "").replace(",\\!", "") if re.fullmatch(r"[\\$\d,! ]+", a) else a
    a = a.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", a) else a  # 58,500 -> 58500
    if _INT.fullmatch(a):
        return f"{a}.0" if i % 2 else f"{{{a}}}"
    frac = _FRAC.fullmatch(a)
    if frac:
        sign, num, den = frac.groups()
        command = "\\frac" if "dfrac" in a else "\\dfrac"
        return f"{sign}{num}/{den}" if i % 2 else f"{sign}{command}{{{num}}}{{{den}}}"
    out = a.replace("\\dfrac", "\\frac").replace("\\frac", "\\dfrac").replace("=", " = ")
    if " ".join(out.split()) == a and a.startswith("\\{"):  # a set: \left\{ ... \right\}
        out = a.replace("\\{", "\\left\\{").replace("\\}", "\\right\\}")
    if " ".join(out.split()) == a and re.search(r"[()[\]]", a):
        out = re.sub(r"[([]", lambda m: "\\left" + m.group(0), a)
        out = re.sub(r"[)\]]", lambda m: "\\right" + m.group(0), out)
    unit = re.fullmatch(r"(\d+)(\.\d+)?(\s*\\(?:text|mbox)\{.*)", a)  # 5.4 \text{ cents} -> 5.40 \text{ cents}
    if " ".join(out.split()) == a and unit:
        out = f"{unit[1]}{unit[2] or '.'}0{unit[3]}"
    if " ".join(out.split()) == a:
        out = a.replace("\\text{", "\\text {").replace("\\$", "")
    return out if " ".join(out.split()) != a else f"{{{a}}}"


def wrong(rows: list[dict], i: int) -> str:
    """A wrong answer: an integer gold plus one (restated), else the next row's answer."""
    gold = " ".join(rows[i]["answer"].split())
    return restate(str(int(gold) + 1), i) if _INT.fullmatch(gold) else rows[(i + 1) % len(rows)]["answer"]


def completion(answer: str, i: int) -> str:
    if i % 3 or "$" in answer:
        return f"So the answer is $\\boxed{{{answer}}}$."
    return f"The final answer is ${answer}$."


@pytest.mark.slow
def test_math500_restated_and_wrong_answers_and_mbpp_123_agree_twice_under_load(busy_core):
    rows = read_rows(shared_file("math500/test.jsonl"))
    restated = [completion(restate(r["answer"], i), i) for i, r in enumerate(rows)]
    same = [r["answer"] for r, c in zip(rows, restated) if " ".join(r["answer"].split()) == extract_final_answer(c)[0]]
    assert same == []  # each restated answer reaches the parser
    wrongs = [completion(wrong(rows, i), i) for i in range(len(rows))]
    for _ in range(2):
        verdicts = score_rows(restated + wrongs, rows + rows, "math")
        assert [(r["unique_id"], v.reason) for r, v in zip(rows, verdicts) if v.score != 1.0] == []
        assert [(r["unique_id"], v.reason) for r, v in zip(rows, verdicts[len(rows):]) if v.score != 0.0] == []
    task = [r for r in read_rows(shared_file("mbpp/mbpp.jsonl")) if r["task_id"] == 123]
    assert [v.score for v in score_rows([task[0]["code"]] * 4, task * 4, "code")] == [1.0] * 4


@pytest.fixture
def cores_saturated():
    """Two CPU hogs per core; as root, at a higher priority than the verifier and its sandbox (nice -5)."""
    hogs = [subprocess.Popen(["nice", "-n", "-5" if os.getuid() == 0 else "0", "yes"], stdout=subprocess.DEVNULL)
            for _ in range(2 * (os.cpu_count() or 1))]
    yield
    for hog in hogs:
        hog.kill()
        hog.wait()


def _near_limit(cpu_s: float) -> str:
    return ("import time\ndef f(n):\n    start = time.process_time()\n"
            f"    while time.process_time() - start < {cpu_s}:\n        pass\n    return n + 1\n")


ROW = {"id": "inc", "prompt": "def f(n):\n    \"\"\"n + 1.\"\"\"\n", "entry_point": "f",
       "test": "def check(candidate):\n    assert candidate(1) == 2\n"}


def test_verdicts_depend_on_cpu_time_not_on_load(cores_saturated):
    """With the blocked-time backstop at 1x the CPU limit, any wall-clock backstop would cut off the honest
    program (it gets a fraction of a core); a program that blocks is still stopped, labelled, soon."""
    code = get_verifier("code", timeout_s=1, wall_factor=1)
    big = {**ROW, "test": "def check(candidate):\n    assert candidate(10 ** 6000) == 10 ** 6000 + 1\n"}
    temp_files = ("import os, tempfile\ndef f(n):\n    d = tempfile.mkdtemp()\n    for i in range(500):\n"
                  "        open(os.path.join(d, str(i)), 'w').write(str(n))\n    return int(open(os.path.join(d, '7')).read()) + 1\n")
    programs = [_near_limit(0.7), "def f(n):\n    return n + 1\n", "def f(n):\n    return n + 1\n", temp_files]
    honest = score_rows(programs, [ROW, ROW, big, ROW], "code", options={"timeout_s": 1, "wall_factor": 1})
    assert [(v.score, v.failure) for v in honest] == [(1.0, "")] * 4, honest
    start = time.monotonic()
    blocked = code.verify_unguarded("import time\ndef f(n):\n    time.sleep(60)\n    return n + 1\n", ROW)
    assert (blocked.score, blocked.failure) == (0.0, "sandbox_limit") and "without using CPU" in blocked.reason
    assert time.monotonic() - start < 10
    over = code.verify_unguarded(_near_limit(1.5), ROW)
    assert (over.score, over.failure) == (0.0, "sandbox_limit") and "CPU time limit" in over.reason, over


@pytest.mark.slow
def test_an_honest_program_using_most_of_ten_cpu_seconds_passes_on_a_saturated_machine(cores_saturated):
    verdicts = score_rows([_near_limit(8.4)] * 2, [ROW] * 2, "code")  # the default limits: 10 CPU seconds
    assert [(v.score, v.failure) for v in verdicts] == [(1.0, ""), (1.0, "")], verdicts
