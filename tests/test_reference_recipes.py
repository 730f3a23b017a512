"""Every reference recipe runs end to end on CPU, not just validates: the real recipe file through the CLI,
with the tiny model as its base, the Tülu 3 schema fixtures (tests/fixtures) as its data, no launcher, and
a few steps per stage, all given as overrides. Every stage must complete and every training stage export a
model; an eval stage evaluates two tiny-world items (the real tasks' prompts outgrow the tiny model).

The RLVR fixture holds GSM8K, MATH and IFEval rows of allenai/RLVR-GSM-MATH-IF-Mixed-Constraints' schema
(messages, ground_truth, dataset, constraint_type, constraint); the IFEval rows' ground_truth is open-instruct's
{"func_name": ..., ...} JSON, which the `ifeval` verifier scores (tests/test_rewards_ifeval_functions.py)."""
import json

import pytest
import yaml

from conftest import REPO, posttrain_cli
from posttrain import hf
from posttrain.worlds import tinyworld

pytestmark = pytest.mark.slow  # about a minute per recipe on 2 cores

FIXTURES = REPO / "tests" / "fixtures"
DATA = {"sft": "tulu3_sft_mixture.jsonl", "dpo": "tulu3_preference_mixture.jsonl", "rlvr": "tulu3_rlvr_mixture.jsonl"}
SMALL = {  # per stage kind: a few steps on the tiny model
    "sft": ["max_length=256", "train.max_steps=2", "train.per_device_train_batch_size=2",
            "train.gradient_accumulation_steps=1", "train.save_steps=2"],
    "dpo": ["max_length=256", "train.max_steps=2", "train.per_device_train_batch_size=2",
            "train.gradient_accumulation_steps=1", "train.save_steps=2"],
    "rlvr": ["max_completion_length=8", "num_generations=2", "train.max_steps=4", "train.per_device_train_batch_size=2",
             "train.gradient_accumulation_steps=1", "train.save_steps=4"],
}
RECIPES = ["tulu3_8b.yaml", "olmo2_instruct.yaml", "olmo2_instruct_lora_1gpu.yaml"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "model"
    tok = tinyworld.build_tokenizer()
    hf.save_model(tinyworld.build_model(tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=64), tok, path)
    return path


def overrides(recipe: dict, base) -> list[str]:
    out = [f"vars.base_model={base}"]
    if "launcher" in recipe.get("vars", {}):
        out += ["vars.launcher.type=none", "vars.launcher.num_processes=1", "vars.launcher.deepspeed=null"]
    for name, stage in recipe["stages"].items():
        kind = stage["kind"]
        if kind == "eval":  # the real tasks' prompts (8-shot GSM8K) do not fit the tiny model's 256 positions
            out += [f"stages.{name}.tasks=[{{name: tinyworld, limit: 2}}]", f"stages.{name}.max_new_tokens=8"]
        if kind not in DATA:
            continue
        out += [f"stages.{name}.data={FIXTURES / DATA[kind]}"] + [f"stages.{name}.{o}" for o in SMALL[kind]]
        if "launcher" in stage and "vars" not in str(stage["launcher"]):
            out += [f"stages.{name}.launcher.type=none", f"stages.{name}.launcher.num_processes=1"]
    return out


@pytest.mark.parametrize("name", RECIPES)
def test_reference_recipe_runs_end_to_end_on_the_tiny_model_and_fixtures(name, tiny_base, tmp_path):
    recipe = yaml.safe_load((REPO / "recipes" / name).read_text())
    proc = posttrain_cli("run", REPO / "recipes" / name, "--out", tmp_path / "run", *overrides(recipe, tiny_base),
                         timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in recipe["stages"]:
        manifest = json.loads((tmp_path / "run" / stage / "manifest.json").read_text())
        assert manifest["status"] == "complete", (stage, manifest.get("error"))
        if recipe["stages"][stage]["kind"] in DATA:  # a training stage
            assert manifest["metrics"]["global_step"] > 0
            assert (tmp_path / "run" / manifest["artifacts"]["model"] / "config.json").exists()
