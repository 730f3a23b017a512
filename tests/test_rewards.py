"""Verifier registry, numeric, math, shaping terms, combinations and score_rows."""
import time

import pytest

from posttrain.rewards import (RowError, Verdict, Verifier, VerifierFailure, combine, get_verifier, list_verifiers,
                               register_verifier, score_rows)


def test_registry_names_and_did_you_mean():
    assert {"numeric", "gsm8k", "math", "ifeval", "ifeval_loose", "code", "format", "eos", "length"} <= set(list_verifiers())
    with pytest.raises(KeyError, match="Did you mean 'numeric'.*Known verifiers: .*math"):
        get_verifier("numerc")
    with pytest.raises(TypeError, match="accepts: extract, rel_tol, abs_tol"):
        get_verifier("numeric", tolerance=1)


@pytest.mark.parametrize("completion, truth, score", [
    ("3 + 4 = 7 so... The answer is 42.", "42", 1.0),
    ("The answer is 42.", "41", 0.0),
    ("Step 1 ... #### 1,234", "1234", 1.0),
    ("She pays $1,234.50 in total.", "1234.5", 1.0),
    ("The answer is -7", "-7", 1.0),
    ("The answer is −7", "-7", 1.0),
    ("The answer is -$5.", "-5", 1.0),
    ("The answer is 3/4", "0.75", 1.0),
    ("The answer is 0.75", "3/4", 1.0),
    ("The answer is 50%.", "50", 1.0),
    ("The answer is 18 dollars", "18", 1.0),
    ("The answer is: **12** apples", "12", 1.0),
    ("The answer is $\\boxed{12}$", "12", 1.0),
    ("I got 5 apples and then 9 more", "9", 1.0),  # last-number fallback
    ("The answer is 0.3333333", "1/3", 1.0),  # within the default tolerance
    ("The answer is 0.333", "1/3", 0.0),  # outside it
    ("no digits at all", "1", 0.0),
    ("The answer is 1/0.", "1", 0.0),
])
def test_numeric_cases(completion, truth, score):
    assert get_verifier("numeric")(completion, {"ground_truth": truth}).score == score


def test_numeric_anchor_beats_later_numbers_and_modes_are_configurable():
    text = "The answer is 42. Check: 40 + 2 = 42, and 7 apples."
    assert get_verifier("numeric")(text, {"ground_truth": "42"}).score == 1.0
    assert get_verifier("numeric", extract=["last_number"])(text, {"ground_truth": "42"}).score == 0.0
    verdict = get_verifier("numeric", extract=["answer_is"])("It is 42", {"ground_truth": "42"})
    assert verdict.score == 0.0 and "no number found" in verdict.reason
    assert get_verifier("numeric", rel_tol=1e-3)("The answer is 0.3333", {"ground_truth": "1/3"}).score == 1.0
    with pytest.raises(ValueError, match="extract must list modes"):
        get_verifier("numeric", extract=["boxed"])


def test_numeric_ground_truth_from_gsm8k_answer_and_bad_rows():
    v = get_verifier("gsm8k")
    assert v("The answer is 72", {"answer": "48/2 = <<48/2=24>>24\n#### 72"}).score == 1.0
    with pytest.raises(RowError, match="needs 'ground_truth'"):
        v("The answer is 1", {"id": "q7", "question": "?"})
    with pytest.raises(RowError, match="not a number"):
        v("The answer is 1", {"ground_truth": "seven"})


def test_completion_may_be_chat_messages_or_bytes():
    v = get_verifier("numeric")
    row = {"ground_truth": "6"}
    assert v([{"role": "assistant", "content": "The answer is 6."}], row).score == 1.0
    assert v([{"role": "user", "content": "The answer is 5"}, {"role": "assistant", "content": "The answer is 6"}], row).score == 1.0
    assert v({"role": "assistant", "content": [{"type": "text", "text": "The answer is 6"}]}, row).score == 1.0
    assert v(b"The answer is 6 \xff\xfe", row).score == 1.0
    assert "expected a str" in v(None, row).reason


@pytest.mark.parametrize("answer, gold", [
    ("\\frac{1}{2}", "0.5"), ("0.5", "\\frac{1}{2}"), ("1/2", "\\frac12"), ("\\dfrac{3}{4}", "\\frac{3}{4}"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("\\pi", "\\pi"), ("2\\pi", "6.283185307"), ("(1, 3]", "(1,3]"),
    ("\\{1, 2\\}", "\\{2, 1\\}"), ("50\\%", "50\\%"), ("50", "50\\%"), ("10\\text{ cm}", "10"), ("x^2+2x+1", "(x+1)^2"),
])
def test_math_equivalences(answer, gold):
    verdict = get_verifier("math")(f"So we get \\boxed{{{answer}}}.", {"answer": gold})
    assert verdict.score == 1.0, verdict.reason


@pytest.mark.parametrize("completion, gold", [
    ("\\boxed{\\frac{1}{3}}", "0.5"), ("\\boxed{(1, 3)}", "(1,3]"), ("\\boxed{\\sqrt{3}}", "\\sqrt{2}"),
    ("The answer is 5 but no box", "5"), ("\\boxed{5", "5"),
])
def test_math_negatives(completion, gold):
    assert get_verifier("math")(completion, {"ground_truth": gold}).score == 0.0


def test_math_extraction_every_box_nested_braces_and_final_answer_phrase():
    v = get_verifier("math")
    # several different boxes are several candidates (docs/rewards.md); the same value boxed twice is one
    assert v("first \\boxed{1} then \\boxed{\\frac{2}{3}}", {"answer": "\\frac{2}{3}"}).score == 0.0
    assert v("first \\boxed{\\frac{2}{3}} then \\boxed{1}", {"answer": "\\frac{2}{3}"}).score == 0.0
    assert v("so \\boxed{\\frac{2}{3}}. Final: \\boxed{\\frac{2}{3}}", {"answer": "\\frac{2}{3}"}).score == 1.0
    assert v("Final Answer: The final answer is $\\frac{14}{3}$. I hope it is correct.", {"answer": "\\frac{14}{3}"}).score == 1.0
    assert v("the final answer is 12.", {"answer": "12"}).score == 1.0
    with pytest.raises(RowError, match="'ground_truth' or 'answer'"):
        v("\\boxed{1}", {"problem": "?"})


def test_shaping_terms():
    fmt = get_verifier("format")
    assert fmt("... The answer is 3.", {}).score == 1.0
    assert fmt("... it is 3.", {}).score == 0.0
    assert get_verifier("format", require="boxed")("\\boxed{x}", {}).score == 1.0
    assert get_verifier("format", pattern=r"<answer>.*</answer>")("<answer>3</answer>", {}).score == 1.0
    eos = get_verifier("eos")
    assert eos("done", {"finish_reason": "stop"}).score == 1.0
    assert eos("cut off mid", {"finish_reason": "length"}).score == 0.0
    assert get_verifier("eos", eos_token="<|im_end|>")("done<|im_end|>", {}).score == 1.0
    with pytest.raises(RowError, match="finish_reason"):
        eos("done", {})
    length = get_verifier("length", budget_chars=10, zero_at_chars=20)
    assert [length("x" * n, {}).score for n in (5, 10, 15, 20, 30)] == [1.0, 1.0, 0.5, 0.0, 0.0]


def test_combine_weights_terms_and_by_name():
    row = {"ground_truth": "5"}
    shaped = combine({"numeric": 3.0, "format": 1.0})
    assert shaped("The answer is 5", row).score == 1.0
    assert shaped("The answer is 4", row).score == 0.25
    assert shaped("I think 5", row).score == 0.75
    by_name = get_verifier("weighted", weights={"numeric": 1.0, "length": 1.0}, options={"length": {"budget_chars": 5, "zero_at_chars": 25}})
    verdict = by_name("The answer is 5", row)
    assert verdict.score == pytest.approx((1.0 + 0.5) / 2)
    assert "numeric(1)=1" in verdict.reason and "length(1)=0.5" in verdict.reason
    with pytest.raises(ValueError, match="no weight"):
        combine({"numeric": 1.0}, options={"format": {}})


class _Raises(Verifier):
    name = "test_raises"

    def check(self, text, row):
        if text == "boom":
            raise ZeroDivisionError("verifier bug")
        return Verdict(1.0, "fine")


class _Sleeps(Verifier):
    name = "test_sleeps"

    def check(self, text, row):
        if text == "hang":
            while True:
                pass
        return Verdict(1.0, "fine")


register_verifier("test_raises", _Raises)
register_verifier("test_sleeps", _Sleeps, time_limit_s=0.5)


def test_score_rows_routes_each_row_to_its_verifier_with_options():
    rows = [{"id": 1, "verifier": "numeric", "ground_truth": "5"}, {"id": 2, "verifier": "math", "answer": "\\frac12"},
            {"id": 3, "verifier": "ifeval", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}]
    completions = ["The answer is 5", "\\boxed{0.5}", "no commas here"]
    assert [v.score for v in score_rows(completions, rows)] == [1.0, 1.0, 1.0]
    strict = score_rows(["It is 5"], [{"ground_truth": "5"}], "numeric", options={"extract": ["answer_is"]})
    assert strict[0].score == 0.0
    keyed = score_rows(["It is 5"], [{"ground_truth": "5", "verifier": "numeric"}], options={"numeric": {"extract": ["answer_is"]}})
    assert keyed[0].score == 0.0
    with pytest.raises(ValueError, match="no 'verifier' field"):
        score_rows(["x"], [{"ground_truth": "1"}])
    with pytest.raises(KeyError, match="Did you mean"):
        score_rows(["x"], [{"verifier": "ifevl"}])
    with pytest.raises(ValueError, match="2 completions but 1 rows"):
        score_rows(["a", "b"], [{}], "numeric")


def test_score_rows_catches_errors_and_timeouts_and_logs_row_ids(caplog):
    rows = [{"id": f"r{i}"} for i in range(4)]
    start = time.monotonic()
    verdicts = score_rows(["ok", "boom", "ok", "ok"], rows, "test_raises")
    assert [v.score for v in verdicts] == [1.0, 0.0, 1.0, 1.0]
    assert "ZeroDivisionError: verifier bug" in verdicts[1].reason
    verdicts = score_rows(["ok", "hang", "ok", "ok"], rows, "test_sleeps", timeout_s=0.5)
    assert [v.score for v in verdicts] == [1.0, 0.0, 1.0, 1.0] and "timeout" in verdicts[1].reason
    assert time.monotonic() - start < 30
    assert "'r1'" in caplog.text and "ZeroDivisionError" in caplog.text
    # the killed worker was replaced: the pool still works
    assert score_rows(["ok"], [{}], "test_sleeps")[0].score == 1.0


def test_score_rows_stops_when_too_many_rows_fail():
    rows = [{"id": i} for i in range(4)]
    assert len(score_rows(["boom", "boom", "ok", "ok"], rows, "test_raises")) == 4  # exactly half: allowed
    with pytest.raises(VerifierFailure, match="3 of 4 rows could not be verified.*id=0"):
        score_rows(["boom", "boom", "boom", "ok"], rows, "test_raises")
    with pytest.raises(VerifierFailure):
        score_rows(["boom", "ok"], rows[:2], "test_raises", max_failure_fraction=0.25)
    with pytest.raises(VerifierFailure, match="needs 'ground_truth'"):  # bad data is a failure too
        score_rows(["The answer is 1"] * 2, [{"id": 1}, {"id": 2}], "numeric")


def test_direct_call_survives_a_hang_and_a_bug():
    hang = get_verifier("test_sleeps")
    start = time.monotonic()
    verdict = hang("hang", {"id": "h"})
    assert verdict.score == 0.0 and "timeout" in verdict.reason
    assert time.monotonic() - start < 10
    assert "verifier bug" in get_verifier("test_raises")("boom", {}).reason
