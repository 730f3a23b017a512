"""The math and numeric verifiers' own rules (docs/rewards.md, "Math and numeric verifiers"): an answer is one
visible value equal to the gold answer. Each hostile case scored 1 under plain math-verify's lenient reading
(or the numeric verifier's tolerance and first-number reading); each honest control beside it scores 1."""
import sys
from pathlib import Path

import pytest

from posttrain.data import read_rows, shared_file
from posttrain.rewards import RowError, VerifierFailure, get_verifier, score_rows
from posttrain.rewards.math_screen import refusal

sys.path.insert(0, str(Path(__file__).parent))
from test_rewards_load import restate  # noqa: E402


@pytest.fixture(scope="module")
def math():
    return get_verifier("math")


@pytest.fixture(scope="module")
def numeric():
    return get_verifier("numeric")


# Against gold 4, each in a \boxed{}: a relation, a negation, hidden text, a percent, several candidates.
NOT_AN_ANSWER = [
    "\\neq 4", "\\ne 4", "\\not= 4", "\\neg 4", "\\lnot 4", "< 4", "\\leq 4", "\\geq 4", "\\approx 4", "x \\approx 4",
    "5 = 4", "x = 5 = 4", "2x = 4", "4 \\text{ is incorrect}", "4 \\text{ is not the answer}", "\\text{not } 4",
    "\\phantom{4}", "\\hphantom{4}", "\\color{white} 4", "{\\color{white} 4}", "\\textcolor{white}{4}",
    "\\cancel{4}", "4\\%", "4 \\%", "4%", "4 \\text{ cm or } 5 \\text{ cm}", "4 \\text{ or } 5",
    "A) 5 \\quad B) 4", "(A)\\ 5,\\ (B)\\ 4", "\\text{(A) } 5 \\quad \\text{(B) } 4",
    "\\begin{cases} x = 5 \\\\ x = 4 \\end{cases}", "\\begin{cases} 5 & a > 0 \\\\ 4 & a \\le 0 \\end{cases}",
    "5 \\\\ 4", "5 ? 4", "5 \\star 4", "5 \\checkmark 4", "5 \\xrightarrow{} 4", "5 \\nRightarrow 4",
    "5 \\leftrightarrow 4", "x \\in \\{4\\}",
]
# The same kinds of trick outside the box: hidden boxes, several boxes, several spans after the phrase.
NOT_AN_ANSWER_TEXT = [
    "So \\boxed{5}. \\phantom{\\boxed{4}}", "So \\boxed{5}. {\\color{white} \\boxed{4}}", "Hmm. \\phantom{\\boxed{4}}",
    "Hmm. {\\color{white} So \\boxed{4}}", "\\textcolor{white}{\\boxed{4}} \\boxed{5}", "\\boxed{5} or \\boxed{4}",
    "\\boxed{5}. Hmm, actually \\boxed{4}", "the final answer is $4$ or $5$.", "The final answer is $4$, or maybe $5$.",
    "The final answer is $5$ \\phantom{The final answer is $4$}",
]
# Honest forms against gold 4.
ANSWERS = ["4", "x = 4", "n=4", "f(3) = 4", "a+b = 4", "x_1 = 4", "AB = 4", "\\boxed{4}", "4.0", "\\frac{8}{2}", "8/2",
           "{4}", "2+2", "\\sqrt{16}", "\\mathbf{4}", "\\text{4}", "4 \\text{ cm}", "4\\text{ square units}",
           "4 \\mbox{ inches}^2", "4^\\circ", "\\$4", "4 \\text{ dollars}"]
HONEST_TEXTS = [  # (completion, gold)
    ("The final answer is $4$. I hope it is correct.", "4"), ("Final Answer: The largest $n$ is 34.", "34"),
    ("Final Answer: The largest $n$ is $34$.", "34"), ("Final answer: $x = 4$", "4"), ("the final answer is 12.", "12"),
    ("\\boxed{4}. Checking again: \\boxed{4}", "4"), ("\\boxed{\\frac12}, that is \\boxed{0.5}", "\\frac{1}{2}"),
    ("\\boxed{4\\%}", "4\\%"), ("\\boxed{4}", "4\\%"), ("\\boxed{50\\%}", "0.5"), ("\\boxed{50 \\text{ percent}}", "50\\%"),
    ("\\boxed{4}", "x=4"), ("\\boxed{x = 4}", "x = 4"), ("\\boxed{y = 3 + 2x}", "y = 2x + 3"),
    ("\\boxed{x \\in [-2, 7]}", "x \\in [-2,7]"), ("\\boxed{\\text{(C)}}", "\\text{(C)}"), ("\\boxed{10080}", "10,\\!080"),
    ("\\boxed{\\begin{bmatrix} 1 \\\\ 2 \\end{bmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}"), ("\\boxed{5.4 \\text{ cents}}", "5.4 \\text{ cents}"),
    ("The roots are \\boxed{1} and \\boxed{-2}.", "1,-2"), ("\\boxed{1, -2}", "1,-2"), ("\\boxed{4 \\cdot 1}", "4"),
]


@pytest.mark.parametrize("answer", NOT_AN_ANSWER)
def test_a_relation_negation_hidden_text_percent_or_several_candidates_is_no_answer(math, answer):
    verdict = math.verify_unguarded(f"So \\boxed{{{answer}}}.", {"answer": "4"})
    assert verdict.score == 0.0, verdict.reason


@pytest.mark.parametrize("text", NOT_AN_ANSWER_TEXT)
def test_hidden_boxes_several_boxes_and_several_spans_are_no_answer(math, text):
    assert math.verify_unguarded(text, {"answer": "4"}).score == 0.0


@pytest.mark.parametrize("answer", ANSWERS)
def test_honest_answers_score_one(math, answer):
    verdict = math.verify_unguarded(f"So \\boxed{{{answer}}}.", {"answer": "4"})
    assert verdict.score == 1.0, verdict.reason


@pytest.mark.parametrize("text, gold", HONEST_TEXTS)
def test_honest_phrases_boxes_percentages_relations_and_sets_score_one(math, text, gold):
    verdict = math.verify_unguarded(text, {"answer": gold})
    assert verdict.score == 1.0, verdict.reason


@pytest.mark.parametrize("text, gold", [
    ("\\boxed{1}", "1,-2"), ("\\boxed{1}, \\boxed{-2}, \\boxed{3}", "1,-2"), ("\\boxed{4\\%}", "4"), ("\\boxed{5\\%}", "0.5"),
    ("\\boxed{y \\neq 2x + 3}", "y = 2x + 3"), ("\\boxed{y = 2x + 3 = 5}", "y = 2x + 3"), ("\\boxed{(C)\\ 4}", "\\text{(C)}"),
])
def test_several_values_percent_and_relation_against_the_gold_answers_form(math, text, gold):
    assert math.verify_unguarded(text, {"answer": gold}).score == 0.0


def test_every_math500_gold_answer_and_its_restatements_pass_the_rules():
    """The rules refuse no honest form of MATH-500's 500 answers (tests/test_rewards_load.restate)."""
    refused = []
    for i, row in enumerate(read_rows(shared_file("math500/test.jsonl"))):
        gold = " ".join(row["answer"].split())
        for answer in (gold, restate(row["answer"], i), restate(row["answer"], i + 1)):
            if refusal(gold, " ".join(answer.split())):
                refused.append((gold, answer, refusal(gold, " ".join(answer.split()))))
    assert refused == []


@pytest.mark.parametrize("gold", ["\\frac{1}{", "}{", "\\sqrt", "?", "(", "\\text{}", ""])
def test_a_gold_answer_that_cannot_be_parsed_is_a_bad_row(math, gold):
    row = {"id": "g1", "answer": gold}
    for completion in ("\\boxed{4}", "no answer at all", f"\\boxed{{{gold}}}"):
        with pytest.raises(RowError, match="row id='g1'.*could not be parsed"):
            math.verify_unguarded(completion, row)
    verdicts = score_rows(["\\boxed{4}", "\\boxed{4}"], [row, {"id": "ok", "answer": "4"}], "math")
    assert [(v.score, v.failure) for v in verdicts] == [(0.0, "bad_row"), (1.0, "")]
    with pytest.raises(VerifierFailure, match="2 of 2 rows"):
        score_rows(["\\boxed{4}", "x"], [row, row], "math")


@pytest.mark.parametrize("text, truth", [
    ("The answer is 191,999,900", "192,000,000"), ("The answer is 1,450,001", "1450000"), ("#### 999999999", "1000000000"),
    ("The answer is 18 or 19 or 20", "18"), ("The answer is 17-19", "17"), ("The answer is 17 - 19", "19"),
    ("The answer is 18, 19 or 20", "18"), ("The answer is 18 to 20", "18"), ("The answer is 18 apples or 19 apples", "18"),
    ("#### 18, 19", "18"), ("The answer is **18** or **19**", "18"), ("The answer is 18–20", "18"),
    ("The answer is 18... no wait, it is 20", "18"), ("The answer is 18... no wait, it is 20", "20"),
    ("The answer is 18. Actually, I mean 21.", "18"), ("The answer is 18. Sorry, that should be 21.", "21"),
])
def test_numeric_integers_are_exact_and_one_number_follows_the_anchor(numeric, text, truth):
    assert numeric.verify_unguarded(text, {"ground_truth": truth}).score == 0.0


@pytest.mark.parametrize("text, truth", [
    ("The answer is 192,000,000", "192000000"), ("The answer is 18.0", "18"), ("The answer is 18.", "18"),
    ("The answer is 18 dollars.", "18"), ("The answer is $1,234.", "1234"), ("#### 72", "72"), ("The answer is 3/4", "0.75"),
    ("The answer is 0.3333333", "1/3"), ("The answer is 18. Wait, let me check: 3 * 6 = 18. Yes.", "18"),
    ("The answer is 18. Wait, no. The answer is 20.", "20"), ("The answer is 18, so she has 18 apples.", "18"),
    ("The answer is 1e3", "1000"),
])
def test_numeric_honest_answers_and_a_restated_correction_score_one(numeric, text, truth):
    verdict = numeric.verify_unguarded(text, {"ground_truth": truth})
    assert verdict.score == 1.0, verdict.reason


def test_numeric_tolerance_still_applies_to_a_fraction_and_the_reason_says_why_not(numeric):
    assert get_verifier("numeric", rel_tol=1e-3).verify_unguarded("The answer is 0.3334", {"ground_truth": "1/3"}).score == 1.0
    assert get_verifier("numeric", rel_tol=1e-3).verify_unguarded("The answer is 1001", {"ground_truth": "1000"}).score == 0.0
    assert "several numbers" in numeric.verify_unguarded("The answer is 17-19", {"ground_truth": "17"}).reason
    assert "self-corrected" in numeric.verify_unguarded("The answer is 18... wait, 20", {"ground_truth": "18"}).reason
