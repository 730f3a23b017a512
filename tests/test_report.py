"""The report from a synthetic run folder laid out the way the runner and stages write it: the table's
numbers are the eval manifest's, the CIs are those of the per-example jsonl, planted contamination is
in the decontamination table, and the HTML is self-contained."""
import json
import math
import random
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from posttrain.data import read_rows, write_json, write_rows
from posttrain.eval.report import build_report
from posttrain.eval.tasks import summarize_records
from posttrain.recipe import load, resolved_stage_config

MODELS = ["base", "sft", "dpo"]
TASKS = {"gsm8k_8shot": ("math", "exact match", 0.2), "math500": ("math", "math-verify equivalence", 0.1),
         "tinyworld": ("tiny world", "exact match", 0.4)}
PLANTED = {"sft-17": ["gsm8k"], "sft-204": ["gsm8k", "math500"], "sft-911": ["gsm8k"]}  # row id -> eval sets


def manifest(stage: str, kind: str, run_dir: Path, metrics: dict | None = None, artifacts: dict | None = None) -> dict:
    return {"stage": stage, "kind": kind, "status": "complete", "fingerprint": f"fp-{stage}", "upstream": {},
            "inputs": {}, "versions": {"python": "3.11.2", "torch": "2.13.0", "trl": "1.16.0"},
            "hardware": {"host": "testhost", "cpus": 2, "platform": "Linux"},
            "started": "2025-01-01T00:00:00+00:00", "ended": "2025-01-01T00:01:00+00:00", "wall_time_s": 60.0,
            "metrics": metrics or {}, "artifacts": artifacts or {}, "error": None, "config": "config.resolved.yaml"}


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
                           "samples": f"samples/{label}/{task}.jsonl",
                           "options": {"shots": 0, "chat": True, "max_new_tokens": 64, "samples": 1, "temperature": 0.0}}
            metrics[f"{label}/{task}"] = tasks[task]["score"]
        results["models"][label] = {"model": f"/models/{label}", "tasks": tasks}
    write_json(out / "results.json", results)
    write_json(run_dir / "eval" / "manifest.json", manifest("eval", "eval", run_dir, metrics, {"results": "eval/results"}))


PAIRS_METRICS = {"prompts": 1800, "samples": 7200, "pairs": 900, "mean_sample_score": 0.55, "skipped_all_equal": 900,
                 "skipped_all_verified": 600, "skipped_none_verified": 300, "skipped_tied_partial": 0}


def make_run(run: Path) -> Path:
    """Stages as the runner leaves them: manifest, config.resolved.yaml (the demo recipe's own stages, resolved
    as the runner writes them), metrics.jsonl for the training stages, the eval results and select summary."""
    rng = random.Random(0)
    stages = ["select", "sft", "pairs", "dpo", "rlvr", "eval"]
    recipe = load(REPO / "recipes" / "tiny.yaml")
    write_json(run / "run.json", {"recipe": "synthetic", "recipe_hash": "abc123", "stages": stages})
    for stage in stages[:-1]:
        (run / stage).mkdir(parents=True)
        config = {"kind": recipe.stages[stage].kind, **resolved_stage_config(recipe.stages[stage])}
        (run / stage / "config.resolved.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_json(run / "select" / "manifest.json", manifest("select", "select", run, artifacts={
        "data": "select/data.jsonl", "audit": "select/audit.jsonl", "summary": "select/summary.json"}))
    write_select_stage(run / "select")
    write_json(run / "pairs" / "manifest.json", manifest("pairs", "generate", run, PAIRS_METRICS, {"pairs": "pairs/pairs.jsonl"}))
    curves = {"sft": lambda s: {"loss": 2 / (1 + s)},
              "dpo": lambda s: {"loss": 0.7 - s / 100, "rewards/margins": s / 10, "rewards/accuracies": 0.5 + s / 100},
              "rlvr": lambda s: {"reward": s / 40, "rewards/numeric/mean": s / 40, "rewards/format/mean": 0.9,
                                 "verifier_reward/numeric": s / 40, "failures/numeric/timeout": 0.0,
                                 "failures/numeric/crash": s / 400, "kl": s / 1000, "completions/mean_length": 40 - s / 5}}
    for stage, curve in curves.items():
        write_json(run / stage / "manifest.json", manifest(stage, stage, run, {"precision": "fp32"}))  # what auto became
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
        assert rows[name][1] == "0", name  # too short to check
        assert rows[name][2] == str(len(planted)), name  # training rows matched
        assert rows[name][3] == (", ".join(planted) or "–"), name  # their ids, from the summary
    assert "37 near-duplicate rows dropped" in md
    # the evaluated sets decontamination did not check are named (this fixture's set "gsm8k" is no task's label)
    caption = section.split("\n\n")[0]
    assert caption.endswith("Not checked at all: gsm8k_8shot, tinyworld.*"), caption


def test_decontamination_names_short_items_and_rows_past_the_examples():
    from posttrain.eval.report_data import decontamination_table

    table = decontamination_table({"ngram": 9, "dropped": 5, "unchecked_tasks": ["lm_eval:mmlu"], "per_eval_set": {
        "tinyworld_code": {"items": 225, "short_items_unchecked": 22, "matched_rows": 5, "examples": ["a", "b", "c"]},
        "gsm8k_8shot": {"items": 1319, "short_items_unchecked": 0, "matched_rows": 0, "examples": []}}},
        evaluated=["tinyworld_code", "tinyworld_format", "gsm8k_0shot"])  # gsm8k_0shot reads gsm8k_8shot's set
    assert table.rows[0] == ["tinyworld_code", "225", "22", "5", "a, b, c and 2 more"]
    assert table.caption.endswith("Not checked at all: lm_eval:mmlu, tinyworld_format.")


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
    assert not re.search(r"""src=["'](?!data:)""", html) and "<link" not in html  # no external assets
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
    from posttrain.eval.report_data import selection_blocks

    summary = {"method": "grape", "input_rows": 300, "kept_rows": 300,
               "sources": {"tutor": {"candidates": 300, "kept": 210}, "terse": {"candidates": 300, "kept": 90}}}
    blocks = selection_blocks("select", summary, tmp_path / "plots")
    table = next(b for b in blocks if isinstance(b, Table) and b.headers[0] == "source")
    assert table.rows == [["tutor", "300", "210", "–"], ["terse", "300", "90", "–"]]  # no verifier: none verified
    assert any(isinstance(b, Figure) and b.path.exists() for b in blocks)


# ---------- what a new reader tripped over ----------

def md_table(md: str, caption: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table under the caption starting with `caption`."""
    block = md[md.index(f"*{caption}"):].split("\n\n")[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()]


def test_hyperparameters_are_each_stages_resolved_config(report_md):
    run_dir, md = report_md
    table = md_table(md, "Hyperparameters per stage")
    header, rows = table[0], {r[0]: dict(zip(table[0][1:], r[1:])) for r in table[2:]}
    assert header[1:] == ["select", "sft", "pairs (generate)", "dpo", "rlvr"]  # stages in run order, eval left out
    config = {s: yaml.safe_load((run_dir / s / "config.resolved.yaml").read_text()) for s in ("sft", "dpo", "rlvr")}
    for stage in ("sft", "dpo", "rlvr"):
        assert rows["learning rate"][stage] == f"{config[stage]['train']['learning_rate']:g}"
        assert rows["steps"][stage] == str(config[stage]["train"]["max_steps"])
        assert rows["batch per device"][stage] == str(config[stage]["train"]["per_device_train_batch_size"])
    assert rows["loss"]["dpo"] == ", ".join(config["dpo"]["loss_type"]) and rows["loss"]["rlvr"] == config["rlvr"]["loss_type"]
    assert rows["β (DPO) / KL β (RLVR) / JSD β (distill)"]["dpo"] == f"{config['dpo']['beta']:g}"
    assert rows["generations per prompt"]["rlvr"] == str(config["rlvr"]["num_generations"])
    assert rows["samples per prompt"]["pairs (generate)"] == "4" and rows["selection method"]["select"] == "grape"
    assert rows["reward terms"]["rlvr"] == "1×verifier" and rows["learning rate"]["pairs (generate)"] == "–"
    assert rows["precision"]["sft"] == "fp32 (auto)" and rows["precision"]["select"] == "–"
    assert rows["loss weights"]["dpo"] == "1.0, 1.0" and rows["loss only on assistant turns"]["sft"] == "True"


def test_pairs_accounting_says_why_prompts_gave_no_pair(report_md):
    from posttrain.stages.generate import make_pairs

    rows = {r[0]: r[1] for r in md_table(report_md[1], "Pairs accounting")[2:]}
    assert rows["prompts sampled"] == "1800" and rows["samples verified"] == "7200"
    assert rows["prompts giving a pair (best vs worst)"] == "900 (50%)" and rows["prompts discarded"] == "900"
    assert rows["↳ all samples verified (nothing to reject)"] == "600"
    assert rows["↳ no sample verified (nothing to prefer)"] == "300"
    # the counts the stage records, told apart by the tied score
    audit = [{"samples": ["a", "b"], "scores": s} for s in ([1.0, 1.0], [0.0, 0.0], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0])]
    pairs, skipped = make_pairs([{"prompt": "q"}] * 5, audit)
    assert len(pairs) == 2 and skipped == {"all_verified": 1, "none_verified": 1, "tied_partial": 1}
    assert [p["chosen"][0]["content"] for p in pairs] == ["a", "b"]


def test_candidate_selection_counts_discarded_responses(tmp_path):
    """GRAPE-like methods keep one response of each prompt: the other candidates are discarded, which the
    report says (it said "dropped rows 0": no prompt was dropped), with the reason."""
    from posttrain.eval.report_data import selection_blocks
    from posttrain.eval.render import to_markdown
    from test_selection_stage import config, run
    from posttrain.worlds import tinyworld

    candidates = tinyworld.sft_candidate_rows(3, seed=3)
    total = sum(len(r["candidates"]) for r in candidates)  # teachers per skill differ
    write_rows(tmp_path / "cands.jsonl", candidates)
    _, _, summary = run(config(data=str(tmp_path / "cands.jsonl"), method="random_response"), tmp_path / "select")
    assert summary["candidates"] == {"total": total, "kept": 3, "discarded": {"not drawn": total - 3}}
    md = to_markdown("r", selection_blocks("select", summary, tmp_path / "plots"), tmp_path)
    rows = {r[0]: r[1] for r in md_table(md, "Selection accounting")[2:]}
    assert rows["prompts read"] == "3" and rows["candidate responses"] == str(total)
    assert rows["responses kept"] == f"3 ({300 / total:.0f}%)" and rows["responses discarded"] == str(total - 3)
    assert rows["↳ not drawn"] == str(total - 3)
    assert "dropped rows" not in md


def test_decontamination_examples_name_rows_without_an_id(tmp_path):
    from posttrain.selection.filters import DecontaminateOptions, EvalFile, apply

    eval_set = tmp_path / "eval.jsonl"
    write_rows(eval_set, [{"question": "what is the sum of seventeen and twenty five apples in the big red basket"}])
    train = tmp_path / "train.jsonl"
    leaked = "what is the sum of seventeen and twenty five apples in the big red basket"
    write_rows(train, [{"id": "a", "prompt": "hello", "completion": "x"}, {"id": None, "prompt": leaked, "completion": "42"},
                       {"prompt": leaked, "completion": "42"}])
    _, summary = apply(str(train), "error", None, DecontaminateOptions(ngram=8, tasks=[], extra=[EvalFile("toy", str(eval_set))]))
    assert summary["decontamination"]["per_eval_set"]["toy"]["examples"] == ["row 1", "row 2"]


def test_an_average_of_one_benchmark_is_not_shown(run_dir, tmp_path):
    results = run_dir / "eval" / "results" / "results.json"
    data = json.loads(results.read_text())
    for model in data["models"].values():
        model["tasks"] = {"tinyworld": model["tasks"]["tinyworld"]}
    write_json(results, data)
    build_report(run_dir, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| tinyworld |" in md and "Average" not in md and "1 benchmarks" not in md


def test_sample_links_resolve_from_the_report_file(report_md, tmp_path):
    run_dir, md = report_md
    links = re.findall(r"\]\(([^)]+\.jsonl)\)", md)
    assert len(links) == len(TASKS) * len(MODELS)
    report_dir = run_dir.parent / "report"
    for link in links:
        assert not Path(link).is_absolute()
        target = (report_dir / link).resolve()
        assert target.parent.parent == (run_dir / "eval" / "results" / "samples").resolve() and target.exists(), link
    html = (report_dir / "report.html").read_text()
    assert sorted(re.findall(r'href="([^"]+)"', html)) == sorted(links)


def png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # the IHDR chunk's width


def test_every_curves_figure_spans_the_same_width(report_md):
    """A one-panel stage (sft) is as wide as a three-panel one (dpo): no two thirds left empty."""
    plots_dir = report_md[0].parent / "report" / "plots"
    widths = {stage: png_width(plots_dir / f"curves_{stage}.png") for stage in ("sft", "dpo", "rlvr")}
    assert len(set(widths.values())) == 1, widths


def test_off_policy_extra_pairs_are_counted_in_the_report():
    """The tiny world's 600 judged courtesy pairs are 600 of DPO's 688 pairs: the report says so."""
    from posttrain.eval.render import Para
    from posttrain.eval.report_data import pairs_blocks

    blocks = pairs_blocks("pairs", {**PAIRS_METRICS, "prompts": 300, "pairs": 88, "extra_pairs": 600})
    text = " ".join(b.text for b in blocks if isinstance(b, Para))
    assert "688 pairs: 88 on-policy (above) and 600 off-policy from `extra_pairs`" in text and "(87%)" in text, text
    assert not [b for b in pairs_blocks("pairs", PAIRS_METRICS) if isinstance(b, Para)]
