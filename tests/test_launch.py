"""A training stage launched under accelerate with DeepSpeed ZeRO-2 (one CPU process here) trains the
same as in-process and is recorded by the parent, which writes the manifest."""
import json

from conftest import MINI_RECIPE
from posttrain.recipe import load
from posttrain.runner import run

LAUNCHED = "    launcher: {type: accelerate, num_processes: 1, deepspeed: zero2}\n"


def test_deepspeed_zero2_under_accelerate_matches_in_process(tmp_path, sft_file):
    recipe = MINI_RECIPE.replace("SFT_DATA", str(sft_file))
    plain, launched = tmp_path / "plain.yaml", tmp_path / "launched.yaml"
    plain.write_text(recipe)
    launched.write_text(recipe + LAUNCHED)  # the sft stage is last in MINI_RECIPE
    run(load(plain), tmp_path / "a", echo=lambda m: None)
    run(load(launched), tmp_path / "b", echo=lambda m: None)
    a, b = (json.loads((tmp_path / d / "sft" / "manifest.json").read_text()) for d in ("a", "b"))
    assert b["status"] == "complete" and (tmp_path / "b" / b["artifacts"]["model"] / "model.safetensors").exists()
    assert b["metrics"]["global_step"] == a["metrics"]["global_step"] == 12
    assert abs(b["metrics"]["final_loss"] - a["metrics"]["final_loss"]) < 1e-3, (a["metrics"], b["metrics"])
