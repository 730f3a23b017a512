"""MinHash near-duplicates and n-gram decontamination, on the real eval sets in ../shared/data."""
import json

import pytest

from posttrain.data import shared_file
from posttrain.eval.tasks import TaskSpec
from posttrain.selection.filters import DEFAULT_TASKS, Contamination, NearDuplicates

LONG = ("the quick brown fox jumps over the lazy dog while the farmer counts twelve sheep in the green "
        "field behind the old red barn near the river and then the children walk home along the narrow path "
        "past the mill where the baker sells warm bread to every traveller who stops at the gate")  # 56 shingles


def test_near_duplicates_keep_the_first_occurrence():
    dedup = NearDuplicates(threshold=0.7, num_perm=128, shingle=5)
    one_word_changed = LONG.replace("twelve", "eleven")  # Jaccard 51/61 = 0.84
    other = "a completely different sentence about tax law deductions and the filing of annual returns on time"
    assert dedup.check(["0", "1", "2", "3"], [LONG, one_word_changed, other, LONG.upper()]) == [None, "0", None, "0"]
    assert dedup.check(["4"], [other + " indeed"]) == ["2"]  # across batches too


def test_short_texts_are_one_shingle():
    dedup = NearDuplicates(threshold=0.7, num_perm=64, shingle=5)
    assert dedup.shingles("Hi there!") == [b"hi there"]


def test_planted_gsm8k_question_is_caught_and_counted():
    question = json.loads(shared_file("gsm8k/test.jsonl").read_text().splitlines()[7])["question"]
    index = Contamination(13)
    index.add_task(TaskSpec("gsm8k_8shot", label="gsm8k"))
    assert index.stats["gsm8k"]["items"] == 1319
    assert index.matches(f"Please solve this: {question.upper()} Think step by step.", "row-7") == ["gsm8k"]
    assert index.matches("Ann has 12 apples and gets 30 more. How many apples now?") == []
    assert index.stats["gsm8k"]["matched_rows"] == 1 and index.stats["gsm8k"]["examples"] == ["row-7"]


@pytest.mark.parametrize("name", DEFAULT_TASKS)
def test_every_builtin_eval_set_loads_with_text(name):
    index = Contamination(13)
    index.add_task(TaskSpec(name))
    stats = index.stats[name]
    assert stats["items"] > 100 and stats["short_items_unchecked"] < stats["items"] / 2
