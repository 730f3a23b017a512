"""The README's demo table is produced by bench/readme_numbers.py from a finished run; a fresh demo run
must reproduce it within the script's stated tolerance (slow: the whole demo, 6-18 min on 2 cores)."""
import json
import subprocess
import sys
from importlib.util import module_from_spec, spec_from_file_location

import pytest
import yaml

from conftest import REPO, posttrain_cli

SCRIPT = REPO / "bench" / "readme_numbers.py"


def fake_run(root, scores: dict[str, float], n=400, seed=0):
    """What a finished tiny run leaves that the script reads: eval results, manifests, the data config."""
    models = {m: {"tasks": {"tinyworld": {"score": s, "n": n, "ci": [s - 0.04, s + 0.03]}}} for m, s in scores.items()}
    (root / "eval" / "results").mkdir(parents=True)
    (root / "eval" / "results" / "results.json").write_text(json.dumps({"models": models}))
    (root / "eval" / "manifest.json").write_text(json.dumps({"wall_time_s": 60, "versions": {"trl": "1.16.0"}}))
    (root / "data").mkdir()
    (root / "data" / "config.resolved.yaml").write_text(yaml.safe_dump({"seed": seed}))
    return root


def script(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_the_table_round_trips_and_a_drifted_score_fails_the_check(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text((REPO / "README.md").read_text())
    run = fake_run(tmp_path / "run", {"base": 0.1, "sft": 0.7, "dpo": 0.72, "rlvr": 0.75}, seed=3)
    assert script(run, "--write", readme).returncode == 0
    assert "| `recipes/tiny.yaml`, seed 3 | 10.0 (6.0–13.0) | 70.0 (66.0–73.0) |" in readme.read_text()
    assert script(run, "--check", readme).returncode == 0
    drifted = fake_run(tmp_path / "drifted", {"base": 0.1, "sft": 0.7, "dpo": 0.72, "rlvr": 0.785})
    proc = script(drifted, "--check", readme)
    assert proc.returncode == 1 and "rlvr: README 75.0 vs run 78.5" in proc.stdout, proc.stdout


def test_the_readme_table_parses():
    spec = spec_from_file_location("readme_numbers", SCRIPT)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    scores = module.readme_scores((REPO / "README.md").read_text())
    assert list(scores) == ["base", "sft", "dpo", "rlvr"] and all(0 <= v <= 100 for v in scores.values())


@pytest.mark.slow
def test_a_fresh_demo_reproduces_the_readme_table(tmp_path):
    run_dir = tmp_path / "tiny"
    proc = posttrain_cli("run", REPO / "recipes" / "tiny.yaml", "--out", run_dir, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check = script(run_dir, "--check", REPO / "README.md")
    assert check.returncode == 0, check.stdout + check.stderr


def test_demo_seeds_tabulates_runs_and_fails_when_the_shape_breaks(tmp_path):
    fake_run(tmp_path / "tiny-seed0", {"base": 0.15, "sft": 0.79, "dpo": 0.805, "rlvr": 0.81}, seed=0)
    fake_run(tmp_path / "tiny-seed1", {"base": 0.03, "sft": 0.48, "dpo": 0.47, "rlvr": 0.55}, seed=1)
    cmd = [sys.executable, REPO / "bench" / "demo_seeds.py", "--no-run", "--runs-dir", tmp_path, "--seeds"]
    proc = subprocess.run([*cmd, "0", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "| 0 | 15.0 | 79.0 | 80.5 | 81.0 | +64.0 | +1.5 | +0.5 | holds |" in proc.stdout, proc.stdout
    assert "| 1 | 3.0 | 48.0 | 47.0 | 55.0 | +45.0 | -1.0 | +8.0 | BROKEN |" in proc.stdout, proc.stdout
    assert subprocess.run([*cmd, "0"], capture_output=True, timeout=60).returncode == 0


# Seed 0 of the demo before ifeval_words, items right of 200 per skill (arithmetic, formats, code, courtesy).
SEED0 = {"base": [1, 16, 0, 0], "sft": [6, 161, 152, 0], "dpo": [3, 148, 150, 199], "rlvr": [6, 163, 153, 200]}


def samples_run(root, correct: dict[str, list[int]], n=200):
    """A finished run whose eval wrote per-item samples for four skills: what the report and demo_seeds read."""
    from posttrain.data import write_rows
    from posttrain.eval.metrics import summarize

    fake_run(root, {m: 0.0 for m in correct})
    folder = root / "eval" / "results"
    results = {"models": {}}
    for model, counts in correct.items():
        tasks = {}
        for skill, k in zip(["arithmetic", "formats", "code", "courtesy"], counts):
            path = f"samples/{model}/{skill}.jsonl"
            values = [1.0] * k + [0.0] * (n - k)
            write_rows(folder / path, [{"id": f"{skill}-{i}", "score": v} for i, v in enumerate(values)])
            tasks[skill] = {**summarize(values), "skill": skill, "samples": path}
        results["models"][model] = {"tasks": tasks}
    (folder / "results.json").write_text(json.dumps(results))
    return root, results


def test_the_report_and_the_seed_table_print_one_rounding_of_a_change(tmp_path):
    """DPO 62.5 -> RLVR 65.25 on the mean of four skills: +2.75 exactly. The report printed +2.7 (a difference of
    means of fractions, 2.749999999999997, formatted half to even) and the seed table +2.8; both print +2.8 now,
    and the level 65.25 as 65.3 in both."""
    from posttrain.eval.skills import stage_changes

    run, results = samples_run(tmp_path / "tiny-seed0", SEED0)
    changes = stage_changes(results, run / "eval" / "results")[-1]
    report_average = [c.text.split()[0] for c in changes.rows[-1][1:]]
    assert report_average == ["+37.8", "+22.6", "+2.8"], report_average
    proc = subprocess.run([sys.executable, REPO / "bench" / "demo_seeds.py", "--no-run", "--runs-dir", tmp_path,
                           "--seeds", "0"], capture_output=True, text=True, timeout=60)
    assert "| 0 | 2.1 | 39.9 | 62.5 | 65.3 | +37.8 | +22.6 | +2.8 | holds |" in proc.stdout, proc.stdout + proc.stderr
