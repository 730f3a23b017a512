"""Same verdict on a busy machine: numeric formats, gold parsing that never caches a failure, and MATH-500
and MBPP's slowest task agreeing with their gold answers while another process keeps a core busy."""
import subprocess

import pytest

from posttrain.data import read_rows, shared_file
from posttrain.rewards import RowError, get_verifier, score_rows
from posttrain.rewards import math_answer


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
    math_answer._GOLD_CACHE.pop("\\frac{7}{9}", None)
    with pytest.raises(RowError):
        math_answer.parse_gold("\\frac{7}{9}")
    assert math_answer.parse_gold("\\frac{7}{9}")  # parsed again, not the remembered failure
    assert math_answer.equivalent("\\frac{7}{9}", "7/9")[0]


@pytest.fixture
def busy_core():
    hog = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
    yield
    hog.kill()
    hog.wait()


@pytest.mark.slow
def test_math500_and_mbpp_123_agree_with_gold_twice_under_load(busy_core):
    rows = read_rows(shared_file("math500/test.jsonl"))
    for _ in range(2):
        verdicts = score_rows([f"\\boxed{{{r['answer']}}}" for r in rows], rows, "math")
        assert [(r["unique_id"], v.reason) for r, v in zip(rows, verdicts) if v.score != 1.0] == []
    task = [r for r in read_rows(shared_file("mbpp/mbpp.jsonl")) if r["task_id"] == 123]
    assert [v.score for v in score_rows([task[0]["code"]] * 4, task * 4, "code")] == [1.0] * 4
