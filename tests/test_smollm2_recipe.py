"""recipes/smollm2.yaml end to end: a smoke run (fast: a 2-layer cut of the real model, a handful of rows per stage)
and the full recipe (slow: the real model at the recipe's sizes, each stage's time recorded)."""
import json

import pytest

from conftest import REPO, posttrain_cli

RECIPE = REPO / "recipes" / "smollm2.yaml"
SMOKE = ["vars.sft_gsm8k=6", "vars.sft_mbpp=2", "vars.pair_prompts=2", "vars.hh_pairs=4", "vars.rl_steps=1",
         "vars.eval_limit=2", "vars.code_limit=1", "vars.max_new_tokens=8", "stages.rlvr.train.save_steps=1"]


@pytest.mark.timeout(900)
def test_the_recipe_runs_end_to_end_on_a_cut_of_the_real_model(tmp_path, smollm2_cut):
    proc = posttrain_cli("run", RECIPE, "--out", tmp_path / "run", f"vars.model={smollm2_cut}", *SMOKE, timeout=850)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifests = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "run").glob("*/manifest.json")}
    assert {n: m["status"] for n, m in manifests.items()} == {n: "complete" for n in
                                                              ("sft", "hh", "pairs", "dpo", "rlvr", "eval_base", "eval", "report")}
    assert manifests["sft"]["metrics"]["assistant_mask"]  # the model's own template, marked for assistant-only loss
    assert manifests["pairs"]["metrics"]["extra_pairs"] == 4
    assert (tmp_path / "run" / "report" / "report" / "report.html").is_file()
    again = posttrain_cli("run", RECIPE, "--out", tmp_path / "run", f"vars.model={smollm2_cut}", *SMOKE, timeout=120)
    assert again.returncode == 0 and again.stdout.count("cached") >= 8, again.stdout


@pytest.mark.slow
def test_the_full_recipe(tmp_path):
    proc = posttrain_cli("run", RECIPE, "--out", tmp_path / "run", timeout=3 * 3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
