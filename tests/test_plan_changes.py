"""`posttrain plan` says what changed since a stage ran (config keys with old → new values, upstream stages,
input files), one line per stage that is never wrapped, at 80 columns off a terminal too."""
import json

from conftest import posttrain_cli, write_recipe
from posttrain.changes import what_changed

RECIPE = "name: plan\nstages:\n  data: {kind: tinyworld, pretrain_rows: 20, sft_rows: 20, rl_rows: 20, rl_courtesy: 0.15}\n"


def test_plan_names_the_changed_keys_on_one_line_per_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    recipe = write_recipe(tmp_path, RECIPE)
    run_dir = tmp_path / "run"
    posttrain_cli("run", recipe, "--out", run_dir, check=True)
    out = posttrain_cli("plan", recipe, "stages.data.rl_courtesy=0.0001", "stages.data.seed=3",
                        "--out", run_dir, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 3, out  # the title, the header, one line for the one stage
    assert lines[2].split()[:2] == ["data", "tinyworld"] and " run " in lines[2]
    assert lines[2].endswith("rl_courtesy 0.15 → 0.0001; seed 0 → 3"), out
    assert "cached" in posttrain_cli("plan", recipe, "--out", run_dir, check=True).stdout


def test_what_changed_names_upstream_and_inputs(tmp_path):
    (tmp_path / "config.resolved.yaml").write_text(
        "kind: sft\ndata: a.jsonl\ntrain: {learning_rate: 5.0e-05, lr_scheduler_kwargs: {}}\nfingerprint: x\n")
    manifest = {"upstream": {"base": "f1", "select": "f2"}, "inputs": {"a.jsonl": "h1"}}
    config = {"data": "a.jsonl", "train": {"learning_rate": 1e-4, "lr_scheduler_kwargs": {"num_decay_steps": 5}}}
    text = what_changed(manifest, tmp_path, config, {"base": "f1", "select": "f9"}, {"a.jsonl": "h2"})
    assert text == ("train.learning_rate 5e-05 → 0.0001; train.lr_scheduler_kwargs.num_decay_steps (unset) → 5; "
                    "upstream select changed; input a.jsonl changed")
    assert what_changed(json.loads("{}"), tmp_path / "gone", config, {}, {}) == "config or inputs changed"
