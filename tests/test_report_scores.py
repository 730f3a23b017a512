"""The report's scores on the synthetic run of test_report.py: one table of per-model scores whose average has a
CI from the items, a change table (not a second score table), and the items each stage fixed and broke."""
import math
import re

import numpy as np

from posttrain.data import read_rows, write_rows
from posttrain.eval.report import build_report
from test_report import MODELS, TASKS, main_table, make_run


def samples(run_dir, label: str, task: str) -> list[dict]:
    return read_rows(run_dir / "eval" / "results" / "samples" / label / f"{task}.jsonl")


def test_the_average_has_a_ci_from_each_benchmarks_items(tmp_path):
    """The average over benchmarks had no CI. Its bootstrap over each benchmark's items agrees with the normal
    approximation of a mean of independent means (variance sum_t var_t / n_t / T^2); without a benchmark's
    per-item outputs that column's average has no CI, and says so."""
    run_dir = make_run(tmp_path / "run")
    build_report(run_dir, tmp_path / "report")
    _, cells = main_table((tmp_path / "report" / "report.md").read_text())["Average"]
    for label, cell in zip(MODELS, cells[2:]):
        lo, hi = map(float, re.search(r"<sub>([\d.]+)–([\d.]+)</sub>", cell).groups())
        groups = [np.array([r["score"] for r in samples(run_dir, label, t)]) for t in TASKS]
        mean = np.mean([g.mean() for g in groups])
        se = math.sqrt(sum(g.var() / len(g) for g in groups)) / len(groups)
        assert abs(lo - 100 * (mean - 1.96 * se)) < 1.5 and abs(hi - 100 * (mean + 1.96 * se)) < 1.5, (label, lo, hi)
    (run_dir / "eval" / "results" / "samples" / "sft" / "math500.jsonl").unlink()
    build_report(run_dir, tmp_path / "again")
    md = (tmp_path / "again" / "report.md").read_text()
    _, cells = main_table(md)["Average"]
    assert [c.endswith("<sub>CI –</sub>") for c in cells[2:5]] == [False, True, False], cells


def test_one_table_of_scores_and_a_change_table(tmp_path):
    """The skills table repeated the results table in another order: the scores are in one table; the second
    gives what the first cannot, each change on the same items with its p-value and fixed/broken counts."""
    run_dir = make_run(tmp_path / "run")
    build_report(run_dir, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Skills by stage" not in md and md.count("| Benchmark | metric |") == 1
    changes = md[md.index("## Changes between stages"):].split("\n\n")[2].splitlines()
    assert changes[0] == "| Skill | base → sft | sft → dpo |"
    assert [line.split("|")[1].strip() for line in changes[2:]] == [  # skill, and the task as in the results table
        "math <sub>gsm8k_8shot</sub>", "math <sub>math500</sub>", "tiny world <sub>tinyworld</sub>", "Average"]
    assert all(re.search(r"<sub>p[=<][\d.e-]+, (\d+ fixed, \d+ broken|paired z-test)</sub>", cell)
               for line in changes[2:] for cell in line.strip("|").split("|")[1:]), changes


def test_fixed_and_broken_items_between_consecutive_models(tmp_path):
    """Per benchmark and pair of consecutive models: the items that went wrong -> right and right -> wrong,
    with the question, the gold and both completions, at most SHOWN of each and a count of the rest."""
    from posttrain.eval.report_items import SHOWN

    run_dir = make_run(tmp_path / "run")
    rows = {label: {r["id"]: r for r in samples(run_dir, label, "tinyworld")} for label in MODELS}
    for label in ("base", "sft"):  # completions that say which model wrote them, a long one, chat prompts
        for i, r in enumerate(rows[label].values()):
            r["completions"] = [f"{label} answer {i} " + "x" * (300 if i % 2 else 0)]
            r["prompt"] = [{"role": "user", "content": "an exemplar"}, {"role": "assistant", "content": "its answer"},
                           {"role": "user", "content": f"question {i}"}]
        write_rows(run_dir / "eval" / "results" / "samples" / label / "tinyworld.jsonl", list(rows[label].values()))
    html = build_report(run_dir, tmp_path / "report").read_text()
    md = (tmp_path / "report" / "report.md").read_text()
    base, sft = rows["base"], rows["sft"]
    shared = [i for i in base if i in sft]
    fixed = [i for i in shared if base[i]["score"] < 1 <= sft[i]["score"]]
    broken = [i for i in shared if sft[i]["score"] < 1 <= base[i]["score"]]
    assert len(fixed) > SHOWN, "the fixture must fix more items than are shown"
    caption = f"*tinyworld, base → sft: {len(fixed)} fixed, {len(broken)} broken of {len(shared)} items both answered*"
    assert caption in md
    table = md[md.index(caption):].split("\n\n")[1].splitlines()[2:]
    shown = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in table]
    assert [c[1] for c in shown if c[0] == "fixed"] == fixed[:SHOWN] + [f"and {len(fixed) - SHOWN} more"]
    for cells in shown[:SHOWN]:  # the last user turn is the question; completions of 300+ characters are cut
        n = int(cells[1].split("-")[1])
        assert cells[2:4] == [f"question {n}", "1"], cells
        for cell, label in zip(cells[4:6], ("base", "sft")):
            assert cell.startswith(f"{label} answer {n}") and len(cell) <= 160 and cell.endswith("…") == bool(n % 2)
    assert any(c.endswith("…") for cells in shown[:SHOWN] for c in cells[4:6]), "no long completion was shown"
    assert [c[1] for c in shown if c[0] == "broken"] == broken[:SHOWN] + ([f"and {len(broken) - SHOWN} more"]
                                                                            if len(broken) > SHOWN else [])
    assert "Fixed and broken items" in html and 'class="text"' in html
