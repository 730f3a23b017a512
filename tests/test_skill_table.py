"""eval/skills.py: the change table by skill and its paired significance tests, on eval results written to disk."""
import numpy as np

from posttrain.data import write_rows
from posttrain.eval.metrics import summarize
from posttrain.eval.render import to_html, to_markdown
from posttrain.eval.skills import holm, mcnemar_p, paired_z_p, stage_changes


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
    heading, changes = stage_changes(results, tmp_path)  # the scores are the results table's (test_report.py)
    assert heading.text == "Changes between stages" and [r[0].text for r in changes.rows] == ["skill of a", "skill of b", "Average"]
    cells = {r[0].text: [c.text for c in r[1:]] for r in changes.rows}
    assert cells["skill of a"] == ["+33.3 (real gain)", "+0.0"]
    assert cells["skill of b"] == ["+5.0", "+0.0"]
    assert cells["Average"][0].endswith("(real gain)") and not cells["Average"][1].endswith(")")
    assert changes.headers == ["Skill", "base → sft", "sft → dpo"]


def test_one_skill_makes_no_table(tmp_path):
    results = write_results(tmp_path, {"base": {"a": [0.0, 1.0]}, "sft": {"a": [1.0, 1.0]}})
    assert stage_changes(results, tmp_path) == []


def test_a_real_regression_is_a_loss_never_best(tmp_path):
    """-13.3 points, significant: marked as a real loss (▼, red), not bold-green ▲ (the score table's "best")."""
    n = 150
    sft = [1.0] * 100 + [0.0] * 50
    dpo = [1.0] * 80 + [0.0] * 70         # 20 broken, none fixed
    other = [0.0] * 75 + [1.0] * 75
    results = write_results(tmp_path, {"sft": {"a": sft, "b": other}, "dpo": {"a": dpo, "b": other}})
    changes = stage_changes(results, tmp_path)[1]
    cell = changes.rows[0][1]
    assert cell.text == "-13.3 (real loss)" and cell.change == "loss" and not cell.best
    html = to_html("r", [changes])
    assert 'class="num loss"' in html and 'class="num best"' not in html and "▼ a real loss" in html
    assert "**-13.3 (real loss)** ▼" in to_markdown("r", [changes], tmp_path)


def test_p_values_have_no_resampling_floor(tmp_path):
    """Three large changes in a family of 12: a bootstrap of 2,000 resamples floors each at 2/2001 and Holm
    multiplies that by 12 (p=0.012 for +37.8 and +2.7 alike); the z-test gives each its own p."""
    rng = np.random.default_rng(0)
    n, models = 200, ["base", "sft", "dpo", "rlvr"]
    rates = {"base": 0.02, "sft": 0.45, "dpo": 0.7, "rlvr": 0.75}
    scores = {m: {t: list((rng.random(n) < rates[m]).astype(float)) for t in "abcd"} for m in models}
    changes = stage_changes(write_results(tmp_path, scores), tmp_path)[1]
    average = [c.note for c in changes.rows[-1][1:]]
    assert average[0].startswith("p<0.001") and average[1].startswith("p<0.001"), average
    # the z-test matches a 200,000-resample paired bootstrap where that can still resolve it
    d = [np.array([1.0] * 30 + [0.0] * 150 + [-1.0] * 20) for _ in range(2)]
    boot = rng.choice(np.concatenate(d), size=(200_000, 400)).mean(axis=1)
    assert abs(paired_z_p(d) - 2 * np.mean(boot <= 0)) < 0.02
    assert paired_z_p([np.zeros(5)]) == 1.0 and paired_z_p([np.ones(5)]) == 0.0
