"""`ifeval_words`: the tiny world's format skill scores the format *and* the words it asked for, in order
(IFEval's title check alone passed "<<Cat>>\\ncat pen pen sun" for "cat, hat, red, owl")."""
import random

import pytest

from posttrain.eval.tasks import TASKS
from posttrain.rewards import get_verifier
from posttrain.worlds import formats

VERIFIER = get_verifier("ifeval_words")


def score(problem, text: str) -> float:
    return VERIFIER(text, formats.fields(problem)).score


def test_the_wrong_words_under_a_right_title_score_zero():
    problem = ("title", ("cat", "hat", "red", "owl"), "")
    assert score(problem, "Sure, here they are:\n<<Cat>>\ncat pen pen sun") == 0.0  # what RLVR was paid for
    assert get_verifier("ifeval")("Sure, here they are:\n<<Cat>>\ncat pen pen sun", formats.fields(problem)).score == 1.0
    assert score(problem, "<<Cat>>\ncat hat red owl") == 1.0
    assert score(problem, "<<Cat>>\ncat hat owl red") == 0.0  # order
    assert score(problem, "<<Cat>>\ncat hat red owl owl") == 0.0  # an extra word
    assert score(problem, "cat hat red owl") == 0.0  # the words without the format


@pytest.mark.parametrize("kind", sorted(formats.KINDS))
def test_each_teacher_scores_as_its_docstring_says(kind):
    rng = random.Random(0)
    problems = [p for p in formats.problems() if p[0] == kind][::97][:20]
    for p in problems:
        assert score(p, formats.TEACHERS["careful"](p, rng)) == 1.0, p
        # the lead-in line is no content; it breaks only the quotation rule
        assert score(p, formats.TEACHERS["chatty"](p, rng)) == (0.0 if kind == "quotes" else 1.0), p
        assert score(p, " ".join(p[1])) == 0.0, p  # sloppy's forgotten format
        wrong = formats.follow((kind, p[1][::-1], p[2]))  # the right format, the words reversed
        assert score(p, wrong) == 0.0, (p, wrong)


def test_the_format_task_uses_it_and_says_what_it_checks():
    task = TASKS["tinyworld_format"]
    assert task.verifier == "ifeval_words" and "the given words in the given order" in task.description
    assert "ends with" in TASKS["tinyworld_courtesy"].description
