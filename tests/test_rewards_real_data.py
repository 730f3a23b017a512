"""Gold answers verified against their own ground truth on the real GSM8K and MATH-500 files."""
from posttrain.data import read_rows, shared_file
from posttrain.rewards import score_rows


def test_gsm8k_every_gold_solution_is_correct():
    rows = read_rows(shared_file("gsm8k/test.jsonl"))
    verdicts = score_rows([r["answer"] for r in rows], rows, "gsm8k")
    assert len(rows) == 1319
    assert [i for i, v in enumerate(verdicts) if v.score != 1.0] == []


def test_gsm8k_an_off_by_one_answer_is_wrong():
    rows = read_rows(shared_file("gsm8k/test.jsonl"))[:50]
    wrong = [r["answer"].rsplit("####", 1)[0] + f"#### {int(r['answer'].rsplit('####', 1)[1].replace(',', '')) + 1}"
             for r in rows]
    assert sum(v.score for v in score_rows(wrong, rows, "gsm8k")) == 0


def test_math500_gold_solution_boxed_answer_matches_answer_field():
    rows = read_rows(shared_file("math500/test.jsonl"))
    verdicts = score_rows([r["solution"] for r in rows], rows, "math")
    misses = [(r["unique_id"], v.reason) for r, v in zip(rows, verdicts) if v.score != 1.0]
    assert len(rows) == 500 and len(misses) <= 5, misses
    # shifted pairs (each solution against the next problem's answer) must mostly fail
    shifted = score_rows([r["solution"] for r in rows[1:101]], rows[:100], "math")
    assert sum(v.score for v in shifted) <= 5
