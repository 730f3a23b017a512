"""Every kind of recipe mistake is caught before any work, named with file, key and line, all at once."""
from pathlib import Path

import pytest

from conftest import REPO, posttrain_cli, write_recipe
from posttrain.recipe import RecipeError, load

GOOD = """
name: demo
stages:
  data:
    kind: tinyworld
    sft_rows: 10
  base:
    kind: pretrain
    model: builtin:tiny
    data: ${stages.data.output.pretrain}
  sft:
    kind: sft
    model: ${stages.base.output.model}
    data: DATA
    max_length: 160
"""


def problems_of(tmp_path, text, overrides=()) -> list[str]:
    path = write_recipe(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load(path, list(overrides))
    return info.value.problems


def good(tmp_path, sft_file) -> str:
    return GOOD.replace("DATA", str(sft_file))


def test_good_recipe_builds_graph_from_references(tmp_path, sft_file):
    recipe = load(write_recipe(tmp_path, good(tmp_path, sft_file)))
    assert list(recipe.stages) == ["data", "base", "sft"]
    assert recipe.stages["sft"].deps == ["base"]
    assert recipe.stages["base"].deps == ["data"]


def test_stage_order_comes_from_references_not_file_order(tmp_path, sft_file):
    text = good(tmp_path, sft_file)
    sft_block = text[text.index("  sft:"):]
    reordered = text[:text.index("  data:")] + sft_block + text[text.index("  data:"):text.index("  sft:")]
    assert list(load(write_recipe(tmp_path, reordered)).stages) == ["data", "base", "sft"]


def test_unknown_key_with_suggestion_and_line(tmp_path, sft_file):
    text = good(tmp_path, sft_file).replace("    sft_rows: 10", "    sft_rowz: 10")
    [p] = problems_of(tmp_path, text)
    assert "recipe.yaml:6" in p and "stages.data.sft_rowz" in p and "did you mean 'sft_rows'" in p


def test_wrong_type(tmp_path, sft_file):
    [p] = problems_of(tmp_path, good(tmp_path, sft_file).replace("sft_rows: 10", "sft_rows: ten"))
    assert "stages.data.sft_rows" in p and "expected an integer" in p


def test_out_of_range(tmp_path, sft_file):
    [p] = problems_of(tmp_path, good(tmp_path, sft_file).replace("sft_rows: 10", "sft_rows: -3"))
    assert "out of range" in p and ">= 1" in p


def test_reference_to_missing_stage(tmp_path, sft_file):
    [p] = problems_of(tmp_path, good(tmp_path, sft_file).replace("${stages.base.output.model}", "${stages.bsae.output.model}"))
    assert "stages.sft.model" in p and "bsae" in p and "recipe.yaml:13" in p


def test_reference_to_missing_output(tmp_path, sft_file):
    [p] = problems_of(tmp_path, good(tmp_path, sft_file).replace("${stages.data.output.pretrain}", "${stages.data.output.pretrian}"))
    assert "stages.base.data" in p and "pretrian" in p


def test_cycle(tmp_path, sft_file):
    text = good(tmp_path, sft_file).replace("model: builtin:tiny", "model: ${stages.sft.output.model}")
    problems = problems_of(tmp_path, text)
    assert any("dependency cycle" in p and "base -> sft -> base" in p for p in problems)


def test_missing_data_file(tmp_path, sft_file):
    [p] = problems_of(tmp_path, good(tmp_path, sft_file).replace(str(sft_file), "/nowhere/sft.jsonl"))
    assert "data file not found: /nowhere/sft.jsonl" in p and "stages.sft.data" in p


def test_unknown_stage_kind(tmp_path, sft_file):
    problems = problems_of(tmp_path, good(tmp_path, sft_file).replace("kind: pretrain", "kind: pretrian"))
    assert any("unknown stage kind 'pretrian'" in p and "did you mean 'pretrain'" in p for p in problems)


def test_wrong_input_type(tmp_path, sft_file):
    [p] = problems_of(tmp_path, good(tmp_path, sft_file).replace("${stages.base.output.model}", "${stages.data.output.pretrain}"))
    assert "is a dataset, but a model is needed" in p


def test_all_problems_reported_at_once(tmp_path, sft_file):
    text = (good(tmp_path, sft_file).replace("sft_rows: 10", "sft_rows: ten\n    colour: red")
            .replace(str(sft_file), "/nowhere.jsonl"))
    problems = problems_of(tmp_path, text)
    assert len(problems) == 3, problems


def test_unknown_top_level_key_and_bad_yaml(tmp_path, sft_file):
    [p] = problems_of(tmp_path, "stagse: {}\n" + good(tmp_path, sft_file))
    assert "did you mean 'stages'" in p
    [p] = problems_of(tmp_path, "name: x\nstages: {a: [}\n")
    assert "not valid YAML" in p and "recipe.yaml:2" in p


def test_override_problems_name_the_override(tmp_path, sft_file):
    [p] = problems_of(tmp_path, good(tmp_path, sft_file), ["stages.sft.train.learning_rate=fast"])
    assert "stages.sft.train.learning_rate" in p and "override" in p


def test_trl_args_are_checked_against_trl(tmp_path, sft_file):
    text = good(tmp_path, sft_file) + "    train: {trl_args: {max_grad_nrom: 1.0}}\n"
    [p] = problems_of(tmp_path, text)
    assert "SFTConfig" in p and "max_grad_norm" in p


def test_qlora_without_a_gpu_is_a_validation_problem():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: quantized loading may be valid here")
    with pytest.raises(RecipeError) as info:
        load(REPO / "recipes" / "olmo2_instruct_lora_1gpu.yaml", ["stages.sft.lora.quantize=4bit"])
    [p] = info.value.problems
    assert "stages.sft.lora.quantize" in p and "4bit needs a CUDA GPU" in p


def test_qlora_without_bitsandbytes_says_how_to_install_it(monkeypatch):
    import importlib.util

    import torch

    from posttrain.training import Lora, check_lora

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    [(key, message)] = check_lora(Lora(quantize="8bit"))
    assert key == "lora.quantize" and "needs bitsandbytes" in message and "pip install 'posttrain[qlora]'" in message
    assert check_lora(Lora()) == []


def test_cli_validate_exit_codes(tmp_path, sft_file):
    ok = posttrain_cli("validate", write_recipe(tmp_path, good(tmp_path, sft_file)))
    assert ok.returncode == 0, ok.stderr
    bad = posttrain_cli("validate", write_recipe(tmp_path, good(tmp_path, sft_file).replace("sft_rows", "sft_rowz"), "bad.yaml"))
    assert bad.returncode == 2 and "sft_rowz" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("overrides, every", [
    (["num_iterations=2"], 2),  # each buffer of 1 generation is trained on twice: steps 1, 3, 5 are mid-buffer
    (["steps_per_generation=8", "train.gradient_accumulation_steps=2"], 4),  # 8 micro-batches = 4 optimizer steps
    (["steps_per_generation=3", "num_iterations=2", "train.gradient_accumulation_steps=4"], 3),  # lcm(6, 4) = 12 = 3 steps
])
def test_rlvr_save_steps_must_fall_on_generation_buffer_boundaries(tmp_path, overrides, every, capsys):
    from conftest import write_mini_chain
    from posttrain.cli import main

    recipe = write_mini_chain(tmp_path)
    rlvr = [f"stages.rlvr.{o}" for o in overrides]
    [p] = problems_of(tmp_path, recipe.read_text(), rlvr + [f"stages.rlvr.train.save_steps={every + 1}"])
    assert "stages.rlvr.train.save_steps" in p and "generation buffer" in p
    assert f"use a multiple of {every} ({every}, {2 * every}, {3 * every}, ...)" in p
    # A multiple resumes exactly and is valid (TRL's own batch checks only run when training starts).
    load(recipe, rlvr + [f"stages.rlvr.train.save_steps={2 * every}"])
    assert main(["validate", str(recipe), *rlvr, f"stages.rlvr.train.save_steps={every + 1}"]) == 2
    assert "save_steps" in capsys.readouterr().err


# The experiment recipes start from the demo's models (vars, a relative path to runs/tiny/...); they are made by
# `make demo`, so here they are stood in for by an empty folder.
DEMO_MODELS = {"grape_ablation.yaml": ["base_model"], "paser_recovery.yaml": ["base_model", "original_model"],
               "distill_tiny.yaml": ["student_model", "teacher_model"]}


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_recipe_validates(recipe: Path, tmp_path):
    load(recipe, [f"vars.{var}={tmp_path}" for var in DEMO_MODELS.get(recipe.name, [])])


@pytest.mark.parametrize("name", sorted(DEMO_MODELS))
def test_a_relative_model_path_is_a_local_folder_not_a_hub_id(name):
    """`runs/tiny/base/model` was taken for a hub id and never checked; now it is read from the recipe's folder."""
    with pytest.raises(RecipeError) as info:
        load(next((REPO / "recipes").rglob(name)))
    assert all("model folder not found: ../../runs/tiny/" in p for p in info.value.problems), info.value.problems


def test_a_stage_name_typo_in_an_override_gets_a_did_you_mean(tmp_path, sft_file):
    text = GOOD.replace("DATA", str(sft_file))
    problems = problems_of(tmp_path, text, ["stages.stf.train.learning_rate=1e-3"])
    assert len(problems) == 1 and "stages.stf.train.learning_rate: no stage 'stf' in the recipe (did you mean 'sft'?)" \
        in problems[0] and "unknown stage kind" not in problems[0], problems
    # an override that gives the new stage a kind still adds it
    recipe = load(write_recipe(tmp_path, text), ["stages.more.kind=tinyworld", "stages.more.sft_rows=5"])
    assert recipe.stages["more"].config.sft_rows == 5


def test_the_tulu3_recipe_evaluates_its_three_models_and_reports():
    recipe = load(REPO / "recipes" / "tulu3_8b.yaml")
    assert [s.kind for s in recipe.stages.values()] == ["sft", "dpo", "rlvr", "eval", "report"]
    evaluated = recipe.stages["eval"]
    assert list(evaluated.config.models) == ["sft", "dpo", "rlvr"] and evaluated.deps == ["dpo", "rlvr", "sft"]
    assert [t.name for t in evaluated.config.tasks] == ["gsm8k_8shot", "math500", "ifeval", "humaneval"]
    assert recipe.stages["report"].deps == ["eval"]
