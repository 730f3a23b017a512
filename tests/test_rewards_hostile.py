"""Hostile completions: every verifier returns score 0 with a reason, within its time limit.

The elapsed-time bounds are generous (limit + slack): they assert "does not hang", not speed."""
import time

import pytest

from posttrain.rewards import get_verifier, score_rows

SLACK_S = 10
MEGABYTE = "a" * (1 << 20)
HUMANEVAL_ROW = {"prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
ROWS = {
    "numeric": {"ground_truth": "1"},
    "math": {"answer": "1"},
    "ifeval": {"instruction_id_list": ["detectable_format:number_bullet_lists", "detectable_content:number_placeholders",
                                       "detectable_format:title", "detectable_content:postscript",
                                       "language:response_language", "length_constraints:number_sentences"],
               "kwargs": [{"num_bullets": 2}, {"num_placeholders": 1}, {}, {"postscript_marker": "P.P.S"},
                          {"language": "en"}, {"relation": "at least", "num_sentences": 1}]},
    "code": HUMANEVAL_ROW,
    "format": {}, "length": {},
}


def _timed(verifier, completion, row):
    start = time.monotonic()
    verdict = verifier(completion, row)
    return verdict, time.monotonic() - start


@pytest.mark.parametrize("name", sorted(ROWS))
@pytest.mark.parametrize("completion", [MEGABYTE, b"The answer is \xff\xfe\xc3\x28 1", ["not a message"], 12345])
def test_every_verifier_refuses_absurd_input_quickly(name, completion):
    verifier = get_verifier(name)
    verdict, elapsed = _timed(verifier, completion, ROWS[name])
    assert 0.0 <= verdict.score <= 1.0 and verdict.reason
    if completion is MEGABYTE:
        assert "over the max_chars" in verdict.reason
    assert elapsed < verifier.time_limit_s + SLACK_S


@pytest.mark.parametrize("completion, reason", [
    ("\\boxed{" + "{" * 1_000_000 + "}" * 1_000_001, "refused"),
    ("\\boxed{" + "\\frac{1}{" * 50 + "2" + "}" * 51, "refused"),
    ("\\boxed{" + "{" * 20 + "1" + "}" * 21, "nested 20 deep"),
    ("\\boxed{" + "9" * 5000 + "}", "chars"),
    ("\\boxed{9^{9^{9^{9^{9}}}}}", ""),
    ("\\boxed{10^{10^{10^{10^{100}}}}}", ""),
    ("\\boxed{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{2^{1000000}}}}}}}", ""),
    ("\\boxed{" + "x+" * 140 + "x}", ""),
])
def test_math_bombs(completion, reason):
    verifier = get_verifier("math", max_chars=3_000_000)
    verdict, elapsed = _timed(verifier, completion, {"answer": "1"})
    assert verdict.score == 0.0 and reason in verdict.reason
    assert elapsed < verifier.time_limit_s + SLACK_S


def test_numeric_giant_number_is_refused_not_converted():
    verifier = get_verifier("numeric", max_chars=2_000_000)
    verdict, elapsed = _timed(verifier, "The answer is " + "9" * 1_000_000, {"ground_truth": "9"})
    assert verdict.score == 0.0 and "digits" in verdict.reason
    assert elapsed < verifier.time_limit_s + SLACK_S


@pytest.mark.parametrize("completion", [
    "\n" * 49_000 + "* x", " \n" * 24_000, "[" * 49_000, "<<" * 24_000, "p. " * 16_000, "*" * 49_000,
    "a. " * 16_000, "{" * 49_000,
])
def test_ifeval_regex_traps_finish(completion):
    verifier = get_verifier("ifeval")
    verdict, elapsed = _timed(verifier, completion, ROWS["ifeval"])
    assert verdict.reason and "timeout" not in verdict.reason
    assert elapsed < verifier.time_limit_s + SLACK_S


@pytest.mark.parametrize("body", ["    while True:\n        pass\n", "    import os\n    while True:\n        os.fork()\n",
                                  "    x = [0] * (10 ** 10)\n", "    return f()\n", "    import sys\n    sys.exit(0)\n",
                                  "    import os\n    os._exit(0)\n"])
def test_code_bombs(body):
    verifier = get_verifier("code", timeout_s=2)
    verdict, elapsed = _timed(verifier, body, HUMANEVAL_ROW)
    assert verdict.score == 0.0, verdict
    assert elapsed < verifier.time_limit_s + SLACK_S


def test_a_batch_of_bombs_does_not_stop_the_stage_when_the_verifiers_handle_them():
    completions = ["\\boxed{9^{9^{9^{9^{9}}}}}", "\\boxed{" + "{" * 5000 + "}" * 5001, MEGABYTE, "\\boxed{1}"]
    verdicts = score_rows(completions, [{"answer": "1"}] * 4, "math")
    assert [v.score for v in verdicts] == [0.0, 0.0, 0.0, 1.0]
