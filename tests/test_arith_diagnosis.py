"""bench/arith_diagnosis.py's reading of worked arithmetic answers, and the world property the README's
explanation of arithmetic rests on: no teacher writes a wrong single-digit step (the wrong SFT answers forget a
carry or guess the total), so the demo's failure at the step facts is not taught by its data."""
import random
import sys

from conftest import REPO
from posttrain.worlds import arith

sys.path.insert(0, str(REPO / "bench"))
from arith_diagnosis import fact_is_right, judge, step_facts  # noqa: E402


def test_every_teachers_step_facts_are_right_and_only_carries_or_totals_go_wrong():
    rng = random.Random(0)
    problems = rng.sample(arith.SKILL.split[0], 400)
    wrong_answers = {name: 0 for name in arith.TEACHERS}
    for p in problems:
        for name, teach in arith.TEACHERS.items():
            text = teach(p, rng)
            facts = step_facts(text)
            assert len(facts) == (2 if name in ("tutor", "hasty") else 0), (name, text)
            assert all(fact_is_right(*fact) for fact in facts), (name, text)
            wrong_answers[name] += not text.endswith(f"The answer is {arith.answer(*p)}.")
    # The wrong answers exist (hasty's forgotten carries, guesser's totals) although every step fact is right.
    assert wrong_answers["tutor"] == wrong_answers["terse"] == 0
    assert wrong_answers["hasty"] > 20 and wrong_answers["guesser"] > 100


def test_judge_separates_reading_the_numbers_from_the_step_facts():
    # The demo's SFT model on held-out item 0: it reads both numbers and copies the digits, but 5+5 is not 7.
    verdict = judge("25+15: 5+5=7; 2+1+0=7. The answer is 77.", (25, "+", 15))
    assert verdict == {"restated numbers": True, "step operands": True, "step facts": 2, "step facts right": 0,
                       "final number from the steps": True, "correct": False}
    # A misread number: its own steps right (91-24 = 67), the problem (91-28) not.
    verdict = judge("91-24: 11-4=7, borrow 1; 9-2-1=6. The answer is 67.", (91, "-", 28))
    assert verdict["restated numbers"] is False and verdict["step facts right"] == 2 and verdict["correct"] is False
    # Operands not those of the restated numbers (91-28 gives 11-8 and 9-2), in the low step or the high one.
    assert judge("91-28: 10-8=2, borrow 1; 9-2-1=6. The answer is 62.", (91, "-", 28))["step operands"] is False
    assert judge("91-28: 11-8=3, borrow 1; 9-4-1=4. The answer is 43.", (91, "-", 28))["step operands"] is False
    assert judge("91-28=63. The answer is 63.", (91, "-", 28)) is None  # no working: not a worked answer
