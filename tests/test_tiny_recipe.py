"""recipes/tiny.yaml end to end through the real CLI, at a reduced size that fits CI: every stage
completes, the model learns, the report's table carries the eval stage's numbers, a re-run is cached."""
import json
import re

import pytest

from conftest import REPO, posttrain_cli

# Slow (make test-all): about 10-15 min on 2 cores (the demo's base model and SFT). The fast suite's learning claim is in test_runs.py.
pytestmark = pytest.mark.slow

# The demo's base model and SFT; fewer pairs, DPO/RLVR steps and eval problems, to fit CI.
CI_SIZE = [
    "stages.data.sft_rows=1000", "stages.data.rl_rows=1000",
    "stages.pairs.limit=128",
    "stages.dpo.train.max_steps=10",
    "stages.rlvr.train.max_steps=10", "stages.rlvr.train.per_device_train_batch_size=32",
    *(f"stages.eval.tasks.{i}.limit=100" for i in range(4)),
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    proc = posttrain_cli("run", REPO / "recipes" / "tiny.yaml", "--out", run_dir, *CI_SIZE, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


def scores(run_dir, task="tinyworld") -> dict[str, float]:
    results = json.loads((run_dir / "eval" / "results" / "results.json").read_text())
    return {label: m["tasks"][task]["score"] for label, m in results["models"].items()}


SKILL_TASKS = ["tinyworld", "tinyworld_format", "tinyworld_code", "tinyworld_courtesy"]


def test_every_stage_completes_with_its_artifacts(tiny_run):
    stages = json.loads((tiny_run / "run.json").read_text())["stages"]
    assert stages == ["data", "base", "select", "sft", "pairs", "dpo", "rlvr", "eval", "report"]
    for stage in stages:
        manifest = json.loads((tiny_run / stage / "manifest.json").read_text())
        assert manifest["status"] == "complete", (stage, manifest.get("error"))
        for path in manifest["artifacts"].values():
            assert (tiny_run / path).exists()


def test_sft_learns_the_skills_and_only_dpo_teaches_courtesy(tiny_run):
    by_task = {t: scores(tiny_run, t) for t in SKILL_TASKS}
    mean = {m: sum(s[m] for s in by_task.values()) / len(SKILL_TASKS) for m in ("base", "sft", "dpo")}
    assert mean["sft"] > mean["base"] + 0.3, by_task
    assert by_task["tinyworld_courtesy"]["dpo"] > by_task["tinyworld_courtesy"]["sft"] + 0.3, by_task


def test_report_table_carries_the_eval_numbers(tiny_run):
    report = (tiny_run / "report" / "report" / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| Benchmark | metric"))
    row = next(line for line in report.splitlines() if line.startswith("| tinyworld |"))
    columns = [c.strip() for c in header.strip("|").split("|")][2:]
    cells = [float(re.search(r"\d+\.\d", c).group()) for c in row.strip("|").split("|")[2:]]
    expected = {label: round(100 * v, 1) for label, v in scores(tiny_run).items()}
    assert dict(zip(columns, cells)) == expected, (row, expected)
    html = (tiny_run / "report" / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script src" not in html


def test_rerun_recomputes_nothing(tiny_run):
    proc = posttrain_cli("run", REPO / "recipes" / "tiny.yaml", "--out", tiny_run, *CI_SIZE)
    assert proc.returncode == 0 and "nothing to do: all 9 stages cached" in proc.stdout, proc.stdout + proc.stderr
