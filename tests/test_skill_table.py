"""eval/skills.py: the table by skill and its paired significance tests, on eval results written to disk."""
import numpy as np

from posttrain.data import write_rows
from posttrain.eval.metrics import summarize
from posttrain.eval.skills import holm, mcnemar_p, skill_tables


def write_results(folder, scores: dict[str, dict[str, list[float]]]) -> dict:
    """results.json's shape (models -> tasks -> summary + samples path) for {model: {task: per-item scores}}."""
    results = {"models": {}}
    for model, tasks in scores.items():
        entries = {}
        for task, values in tasks.items():
            path = f"samples/{model}/{task}.jsonl"
            write_rows(folder / path, [{"id": f"{task}-{i}", "score": v} for i, v in enumerate(values)])
            entries[task] = {**summarize(values), "samples": path, "skill": f"skill of {task}"}
        results["models"][model] = {"tasks": entries}
    return results


def test_exact_mcnemar_and_holm():
    before = np.array([0.0] * 8 + [1.0] * 2 + [1.0] * 5)
    after = np.array([1.0] * 8 + [0.0] * 2 + [1.0] * 5)
    assert abs(mcnemar_p(before, after) - 0.109375) < 1e-9  # 8 fixed, 2 broken: P(|X-5| >= 3), X ~ Bin(10, .5)
    assert mcnemar_p(before, before) == 1.0
    assert np.allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])


def test_only_the_real_change_is_called_real(tmp_path):
    n = 60
    base = [0.0] * n
    sft = [1.0] * 20 + [0.0] * (n - 20)   # task a: 20 items fixed, none broken
    noisy = [1.0] * 3 + [0.0] * (n - 3)   # task b: 3 fixed: within chance
    results = write_results(tmp_path, {"base": {"a": base, "b": base}, "sft": {"a": sft, "b": noisy},
                                       "dpo": {"a": sft, "b": noisy}})
    heading, table, changes = skill_tables(results, tmp_path)
    assert [r[0].text for r in table.rows] == ["skill of a", "skill of b", "Average"]
    assert [c.text for c in table.rows[0][1:]] == ["0.0", "33.3", "33.3"]
    assert [c.text for c in table.rows[2][1:]] == ["0.0", "19.2", "19.2"]  # the mean of the two skills
    cells = {r[0].text: [c.text for c in r[1:]] for r in changes.rows}
    assert cells["skill of a"] == ["+33.3 (real)", "+0.0"]
    assert cells["skill of b"] == ["+5.0", "+0.0"]
    assert cells["Average"][0].endswith("(real)") and not cells["Average"][1].endswith("(real)")
    assert changes.headers == ["Skill", "base → sft", "sft → dpo"]


def test_one_skill_makes_no_table(tmp_path):
    results = write_results(tmp_path, {"base": {"a": [0.0, 1.0]}, "sft": {"a": [1.0, 1.0]}})
    assert skill_tables(results, tmp_path) == []
