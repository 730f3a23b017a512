"""The report from a synthetic run folder laid out the way the runner and stages write it: the table's
numbers are the eval manifest's, the CIs are those of the per-example jsonl, planted contamination is
in the decontamination table, and the HTML is self-contained."""
import json
import math
import random
import re
from pathlib import Path

import pytest

from posttrain.data import read_rows, write_json, write_rows
from posttrain.eval.report import build_report
from posttrain.eval.tasks import summarize_records

MODELS = ["base", "sft", "dpo"]
TASKS = {"gsm8k_8shot": ("math", "exact match", 0.2), "math500": ("math", "math-verify equivalence", 0.1),
         "tinyworld": ("tiny world", "exact match", 0.4)}
PLANTED = {"sft-17": ["gsm8k"], "sft-204": ["gsm8k", "math500"], "sft-911": ["gsm8k"]}  # row id -> eval sets


def manifest(stage: str, kind: str, run_dir: Path, metrics: dict | None = None, artifacts: dict | None = None) -> dict:
    return {"stage": stage, "kind": kind, "status": "complete", "fingerprint": f"fp-{stage}", "upstream": {},
            "inputs": {}, "versions": {"python": "3.11.2", "torch": "2.13.0", "trl": "1.16.0"},
            "hardware": {"host": "testhost", "cpus": 2, "platform": "Linux"},
            "started": "2025-01-01T00:00:00+00:00", "ended": "2025-01-01T00:01:00+00:00", "wall_time_s": 60.0,
            "metrics": metrics or {}, "artifacts": artifacts or {}, "error": None}


def write_eval_stage(run_dir: Path, rng: random.Random) -> None:
    """What the eval stage leaves: samples/<label>/<task>.jsonl, results.json and manifest metrics."""
    out = run_dir / "eval" / "results"
    results, metrics = {"seed": 0, "backend": "hf", "models": {}}, {}
    for m, label in enumerate(MODELS):
        tasks = {}
        for task, (skill, metric, base_rate) in TASKS.items():
            records = [{"id": f"{task}-{i}", "prompt": "q", "ground_truth": "1", "completions": ["1"],
                        "scores": [s], "reasons": [""], "score": s}
                       for i, s in enumerate(float(rng.random() < base_rate + 0.2 * m) for _ in range(40 + 10 * m))]
            write_rows(out / "samples" / label / f"{task}.jsonl", records)
            tasks[task] = {**summarize_records(records), "task": task, "skill": skill, "metric": metric,
                           "options": {"shots": 0, "chat": True, "max_new_tokens": 64, "samples": 1, "temperature": 0.0}}
            metrics[f"{label}/{task}"] = tasks[task]["score"]
        results["models"][label] = {"model": f"/models/{label}", "tasks": tasks}
    write_json(out / "results.json", results)
    write_json(run_dir / "eval" / "manifest.json", manifest("eval", "eval", run_dir, metrics, {"results": "eval/results"}))


def make_run(run: Path) -> Path:
    rng = random.Random(0)
    stages = ["select", "sft", "dpo", "rlvr", "eval"]
    write_json(run / "run.json", {"recipe": "synthetic", "recipe_hash": "abc123", "stages": stages})
    write_json(run / "select" / "manifest.json", manifest("select", "select", run, artifacts={
        "data": "select/data.jsonl", "audit": "select/audit.jsonl", "summary": "select/summary.json"}))
    write_select_stage(run / "select")
    curves = {"sft": lambda s: {"loss": 2 / (1 + s)},
              "dpo": lambda s: {"loss": 0.7 - s / 100, "rewards/margins": s / 10, "rewards/accuracies": 0.5 + s / 100},
              "rlvr": lambda s: {"reward": s / 40, "rewards/numeric/mean": s / 40, "rewards/format/mean": 0.9,
                                 "kl": s / 1000, "completions/mean_length": 40 - s / 5}}
    for stage, curve in curves.items():
        write_json(run / stage / "manifest.json", manifest(stage, stage, run))
        write_rows(run / stage / "metrics.jsonl", [{"time": 0.0, "step": s, **curve(s)} for s in range(0, 40, 5)])
    write_eval_stage(run, rng)
    return run


def write_select_stage(stage_dir: Path) -> None:
    """A select stage's summary output, with planted contamination (and its example rows)."""
    examples = {name: [row_id for row_id, sets in PLANTED.items() if name in sets] for name in ("gsm8k", "math500", "ifeval")}
    write_json(stage_dir / "summary.json", {
        "method": "paser", "input_rows": 1000, "filtered_rows": 40, "pool_rows": 960, "kept_rows": 200,
        "dropped_rows": 800, "budget": {"count": None, "fraction": 0.2, "resolved": 200},
        "reasons": {"selected": 200, "budget": 760, "contaminated": 3, "near-duplicate": 37},
        "paser": {"k": 4, "k_chosen_by": "eigengap", "eigenvalues": [1.0, 0.9],
                  "clusters": [{"cluster": c, "size": 240, "degradation": 0.001 * (c + 1), "budget": 20 + 20 * c,
                                "selected": 20 + 20 * c} for c in range(4)], "ccg_rejected": 5, "budget_shortfall": 0},
        "dedup": {"threshold": 0.7, "num_perm": 256, "shingle": 5, "dropped": 37},
        "decontamination": {"ngram": 13, "dropped": 3, "per_eval_set": {
            name: {"items": 500, "short_items_unchecked": 0, "matched_rows": len(ids), "examples": ids}
            for name, ids in examples.items()}}})


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path / "run")


@pytest.fixture(scope="module")
def report_md(tmp_path_factory) -> tuple[Path, str]:
    """One run and its report, shared by the tests that only read them."""
    root = tmp_path_factory.mktemp("report")
    run = make_run(root / "run")
    build_report(run, root / "report")
    return run, (root / "report" / "report.md").read_text()


def main_table(md: str) -> dict[str, list[str]]:
    """Benchmark -> the model cells' main numbers, from the first Markdown table of report.md."""
    lines = md[md.index("| Benchmark"):].split("\n\n")[0].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        numbers = [re.sub(r"<sub>.*</sub>|\*", "", c).strip() for c in cells[2:2 + len(MODELS)]]
        table[cells[0].strip("*")] = dict(zip(header[2:], numbers)), cells
    return table


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_table_numbers_are_the_eval_manifests(report_md):
    run_dir, md = report_md
    table = main_table(md)
    metrics = json.loads((run_dir / "eval" / "manifest.json").read_text())["metrics"]
    for task in TASKS:
        numbers, _ = table[task]
        assert list(numbers) == MODELS  # columns in the order the eval stage listed its models
        for label in MODELS:
            assert numbers[label] == f"{100 * metrics[f'{label}/{task}']:.1f}", (task, label)
    averages, _ = table["Average"]
    for label in MODELS:
        expected = sum(metrics[f"{label}/{t}"] for t in TASKS) / len(TASKS)
        assert averages[label] == f"{100 * expected:.1f}"


def test_best_cell_per_row_is_marked(report_md):
    table = main_table(report_md[1])
    for task in TASKS:
        numbers, cells = table[task]
        bold = [label for label, cell in zip(MODELS, cells[2:]) if cell.startswith("**")]
        top = max(float(v) for v in numbers.values())
        assert bold and all(float(numbers[b]) == top for b in bold)


def test_ci_and_n_match_the_per_example_jsonl(report_md):
    run_dir, md = report_md
    table = main_table(md)
    for task in TASKS:
        _, cells = table[task]
        for label, cell in zip(MODELS, cells[2:]):
            scores = [r["score"] for r in read_rows(run_dir / "eval" / "results" / "samples" / label / f"{task}.jsonl")]
            lo, hi = wilson(int(sum(scores)), len(scores))
            note = re.search(r"<sub>(.*)</sub>", cell).group(1)
            assert note == f"{100 * lo:.1f}–{100 * hi:.1f}, n={len(scores)}", (task, label)


def test_planted_contamination_is_in_the_decontamination_table(report_md):
    md = report_md[1]
    section = md[md.index("*Decontamination"):]
    rows = {c[0]: c[1:] for c in ([x.strip() for x in line.strip("|").split("|")]
                                  for line in section.split("\n\n")[1].splitlines()[2:])}
    for name in ("gsm8k", "math500", "ifeval"):
        planted = [row_id for row_id, sets in PLANTED.items() if name in sets]
        assert rows[name][1] == str(len(planted)), name  # training rows matched
        assert rows[name][2] == (", ".join(planted) or "–"), name  # their ids, from the summary
    assert "37 near-duplicate rows dropped" in md


def test_reference_column_and_delta(run_dir, tmp_path):
    ref = tmp_path / "tulu.yaml"
    ref.write_text("name: Tulu 3 8B\nscores: {gsm8k_8shot: 87.6, tinyworld: 10.0}\n")
    build_report(run_dir, tmp_path / "report", reference=str(ref))
    numbers, cells = main_table((tmp_path / "report" / "report.md").read_text())["gsm8k_8shot"]
    assert cells[-2] == "87.6"
    assert float(cells[-1]) == pytest.approx(float(numbers["dpo"]) - 87.6, abs=0.051)
    assert main_table((tmp_path / "report" / "report.md").read_text())["math500"][1][-2:] == ["–", "–"]


def test_html_is_self_contained_with_curves(run_dir, tmp_path):
    html = build_report(run_dir, tmp_path / "report").read_text()
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)  # no external assets
    assert html.count("data:image/png;base64,") == 4  # sft, dpo, rlvr curves + the PASER cluster plot
    for stage in ("sft", "dpo", "rlvr"):
        assert f"Training curves of stage &#x27;{stage}&#x27;" in html
    assert "fp-rlvr" in html and "abc123" in html  # provenance


def test_an_incomplete_eval_stage_is_named_not_tabulated(run_dir, tmp_path):
    m = json.loads((run_dir / "eval" / "manifest.json").read_text())
    write_json(run_dir / "eval" / "manifest.json", {**m, "status": "failed"})
    build_report(run_dir, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "eval stage 'eval' is failed" in md and "| Benchmark" not in md


def test_no_cell_is_marked_best_when_all_tie():
    from posttrain.eval.report import score_cells

    entry = {"score": 0.0, "ci": [0.0, 0.06], "n": 60}
    assert not any(c.best for c in score_cells({"a": entry, "b": entry}, ["a", "b"]))


def test_grape_sources_get_a_table_and_histogram(tmp_path):
    from posttrain.eval.render import Figure, Table
    from posttrain.eval.report import selection_blocks

    summary = {"method": "grape", "input_rows": 300, "kept_rows": 300,
               "sources": {"tutor": {"candidates": 300, "kept": 210}, "terse": {"candidates": 300, "kept": 90}}}
    blocks = selection_blocks("select", summary, tmp_path / "plots")
    table = next(b for b in blocks if isinstance(b, Table) and b.headers[0] == "source")
    assert table.rows == [["tutor", "300", "210"], ["terse", "300", "90"]]
    assert any(isinstance(b, Figure) and b.path.exists() for b in blocks)
