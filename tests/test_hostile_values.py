"""Recipe values that used to validate and then train wrongly (issue 26): chat templates that are not templates,
references that lose their edge, YAML 1.1 forms, free-form maps nobody checked, overrides that broke. Each is a
validation error naming the file, line and key, or is read as YAML 1.2 says."""
import copy
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_mini_chain
from posttrain.recipe import Recipe, RecipeError, load

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TEMPLATED = ["sft", "dpo", "rlvr"]  # the mini chain's stages with a chat_template key


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    recipe = write_mini_chain(tmp_path_factory.mktemp("values"))
    return recipe, yaml.safe_load(recipe.read_text())


def problems(recipe, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load(recipe, list(overrides))
    assert all(p.startswith(str(recipe)) for p in info.value.problems), info.value.problems
    return info.value.problems


# -- item 1: a chat_template that is not a built-in name nor a template that renders the conversation ----------
@pytest.mark.parametrize("value,says", [
    ("tulu3", "did you mean 'tulu'"), ("Tulu", "did you mean 'tulu'"), ("'tulu '", "did you mean 'tulu'"),
    ("chatm1", "did you mean 'chatml'"), ("''", "unknown chat template ''"),
    ("'${stages.base.output.model}'", "this key takes a setting"),
    ("'{{ messages[0].content }}'", "drops 'assistant' turns"),
    ("'{% for m in messages %}{{ m.nope.x }}{% endfor %}'", "cannot render"),
])
def test_a_chat_template_must_be_a_name_or_a_template_that_renders(chain, value, says):
    recipe, _ = chain
    for stage in TEMPLATED:
        [p] = problems(recipe, [f"stages.{stage}.chat_template={value}"])
        assert f"stages.{stage}.chat_template:" in p and says in p, p


@pytest.mark.parametrize("value", ["tulu", "chatml", "model", "'{% for m in messages %}{{ m.role }}: {{ m.content }}{% endfor %}'"])
def test_names_and_real_templates_validate(chain, value):
    assert isinstance(load(chain[0], [f"stages.sft.chat_template={value}"]), Recipe)


# -- item 2: max_steps 0 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["base", "sft", "dpo", "rlvr"])
def test_zero_steps_is_an_error(chain, stage):
    [p] = problems(chain[0], [f"stages.{stage}.train.max_steps=0"])
    assert f"stages.{stage}.train.max_steps: 0 steps trains nothing" in p


# -- item 7: free-form maps ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,says", [
    ("stages.base.architecture={num_layers: 6}", "unknown key 'num_layers' (did you mean 'num_hidden_layers'?)"),
    ("stages.base.architecture.hidden_size=big", "expected an integer"),
    ("stages.sft.train.lr_scheduler_kwargs={num_decay_steps: 3}", "not an argument of the linear schedule"),
    ("stages.sft.train.lr_scheduler_type=constant", None),  # with the kwargs below: ignored by transformers
    ("stages.rlvr.train.trl_args={top_k: 3.5}", "train.trl_args.top_k: expected an integer"),
    ("stages.dpo.train.trl_args={padding_free: maybe}", "expected true or false"),
])
def test_free_form_maps_are_checked(chain, override, says):
    if says is None:
        [p] = problems(chain[0], [override, "stages.sft.train.lr_scheduler_kwargs={num_warmup_steps: 3}"])
        assert "not an argument of the constant schedule" in p, p
        return
    [p] = problems(chain[0], [override])
    assert says in p, p


def test_scheduler_kwargs_the_schedule_takes_validate(chain):
    load(chain[0], ["stages.sft.train.lr_scheduler_type=warmup_stable_decay",
                    "stages.sft.train.lr_scheduler_kwargs={num_decay_steps: 3}"])


# -- item 8: references and model ids ----------------------------------------------------------------------------
@pytest.mark.parametrize("value,says", [
    ("x${stages.base.output.model}", "must be the whole value"),
    ("${stages.base.output.model}/sub", "has no output 'model/sub'"),
    ("\\${stages.nope.output.model}", "uninterpolated '${'"),
    ("runs/tiny/base/model", "model folder not found: runs/tiny/base/model"),
    ("'a model'", "neither a hub id"),
])
def test_a_model_value_keeps_its_edge_or_is_checked(chain, value, says):
    [p] = problems(chain[0], [f"stages.dpo.model={value}"])
    assert "stages.dpo.model:" in p and says in p, p


# -- item 9: YAML 1.2, not 1.1 -----------------------------------------------------------------------------------
SFT_TRAIN = "train: {learning_rate: 3.0e-3, max_steps: 12, per_device_train_batch_size: 8, save_steps: 3, logging_steps: 1}"


@pytest.mark.parametrize("key,text,says", [
    ("train.max_steps", "1:30", "expected an integer, got '1:30'"),
    ("train.save_steps", "1_0", "expected an integer, got '1_0'"),
    ("packing", "on", "expected true or false, got 'on'"),
    ("packing", "yes", "expected true or false, got 'yes'"),
])
def test_yaml_11_forms_are_not_converted(chain, key, text, says):
    recipe, _ = chain
    original = recipe.read_text()
    assert SFT_TRAIN in original
    if key.startswith("train."):
        name = key.split(".")[1]
        mutated = original.replace(SFT_TRAIN, re.sub(rf"{name}: \d+", f"{name}: {text}", SFT_TRAIN))
    else:
        mutated = original.replace(SFT_TRAIN, f"{key}: {text}\n    {SFT_TRAIN}")
    mutant = recipe.with_name("yaml11.yaml")
    mutant.write_text(mutated)
    found = problems(mutant)
    assert any(f"stages.sft.{key}: {says}" in p for p in found), found


def test_yaml_12_reads_octal_looking_numbers_as_decimal_and_keeps_every_key(chain, tmp_path):
    recipe, data = chain
    mutant = copy.deepcopy(data)
    mutant["stages"]["sft"]["train"]["save_steps"] = "SAVE"
    mutant["stages"]["rlvr"]["route_map"] = {"yes": "numeric", "NO": "math", "on": "ifeval"}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(mutant, sort_keys=False).replace("SAVE", "010").replace("'yes'", "yes")
                    .replace("'NO'", "NO").replace("'on'", "on"))
    loaded = load(path)
    assert loaded.stages["sft"].config.train.save_steps == 10
    assert loaded.stages["rlvr"].config.route_map == {"yes": "numeric", "NO": "math", "on": "ifeval"}


# -- items 13-16: names, overrides, huge values, messages --------------------------------------------------------
def test_a_name_may_not_end_in_a_newline(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text('name: "mini\\n"\nstages:\n  data: {kind: tinyworld}\n')
    assert any("stages.data" not in p and "needs a 'name'" in p for p in problems(path))


@pytest.mark.parametrize("override,says", [
    ("stages.rlvr.rewards.x.weight=2", "stages.rlvr.rewards is a list of 1 item(s): 'x' is not an index"),
    ("stages.rlvr.rewards.3.weight=2", "'3' is not an index"),
    ("stages.dpo.loss_type.0=ipo", "stages.dpo.loss_type is not in the recipe, so it has no item 0"),
    ("stages.sft.train.seed=" + "9" * 5000, "an integer of 5,000 digits"),
])
def test_overrides_that_used_to_crash_or_mislead(chain, override, says):
    recipe, _ = chain
    if "rewards" in override:  # give the RLVR stage a rewards list to index
        text = recipe.read_text().replace("    num_generations: 4\n", "    num_generations: 4\n    rewards: [{name: verifier}]\n")
        recipe = recipe.with_name("rewards.yaml")
        recipe.write_text(text)
    [p] = problems(recipe, [override])
    assert says in p and len(p) < 1500, p


def test_a_huge_integer_in_the_file_is_a_yaml_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nstages:\n  data: {kind: tinyworld, seed: " + "9" * 5000 + "}\n")
    [p] = problems(path)
    assert f"{path}:3: not valid YAML: an integer of 5,000 digits" in p


def test_a_huge_document_is_refused_while_it_is_read(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nstages: {data: {kind: tinyworld}}\nvars: [" + ", ".join(["1"] * 300_000) + "]\n")
    [p] = problems(path)
    assert "too large to be a recipe: more than 100,000 values" in p


def test_a_huge_bad_value_is_not_echoed_whole(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nstages:\n  data: {kind: '" + "k" * 1_000_000 + "'}\n")
    [p] = problems(path)
    assert "unknown stage kind" in p and len(p) < 2000


def test_a_nul_byte_names_its_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nstages:\n  data: {kind: tinyworld}\nvars: {a: \x00}\n")
    [p] = problems(path)
    assert p.startswith(f"{path}:4: not valid YAML"), p


def test_a_self_reference_names_the_key_that_made_the_edge(chain):
    [p] = problems(chain[0], ["stages.dpo.model=${stages.dpo.output.model}"])
    assert "dpo -> dpo (stages.dpo.model uses stage dpo)" in p


@pytest.mark.parametrize("target,says", [("dir", "a directory"), ("/dev/null", "not a regular file")])
def test_a_recipe_that_is_not_a_file_says_what_it_is(tmp_path, target, says):
    path = tmp_path if target == "dir" else target
    with pytest.raises(RecipeError, match=says):
        load(path)


# -- the fuzz: every class above, drawn at random ----------------------------------------------------------------
TEMPLATE_NAMES = st.sampled_from(["tulu", "chatml"]).flatmap(lambda n: st.sampled_from(
    [n.upper(), n.title(), n + " ", " " + n, n + "3", n[:-1], n + "_v2", "${stages.base.output.model}"]))
WRAPPED_REFS = st.sampled_from(["x{}", "{}x", "{}/model", "./{}", "\\{}"]).map(
    lambda w: w.format("${stages.sft.output.model}"))


@SETTINGS
@given(data=st.data())
def test_fuzz_silent_values_are_validation_errors(chain, data):
    recipe, _ = chain
    kind = data.draw(st.sampled_from(["template", "reference", "steps"]))
    stage = data.draw(st.sampled_from(TEMPLATED))
    if kind == "template":
        override, key = f"stages.{stage}.chat_template='{data.draw(TEMPLATE_NAMES)}'", "chat_template"
    elif kind == "reference":
        override, key = f"stages.{stage}.model={data.draw(WRAPPED_REFS)}", "model"
    else:
        override, key = f"stages.{stage}.train.max_steps=0", "train.max_steps"
    assert any(f"stages.{stage}.{key}:" in p for p in problems(recipe, [override]))


# -- items 4 and 7: reward terms ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rewards,says", [
    ("[{name: numeric, options: {extrac: [answer_is]}}]", "numeric takes no option 'extrac' (did you mean 'extract'?)"),
    ("[{name: numeric, options: {math: {parse_timeout_s: 2}}}]", "keyed by math, but this term is scored by numeric alone"),
    ("[{name: verifier, options: {extract: [answer_is]}}]", "a routed term's options are keyed by verifier name"),
    ("[{name: verifier, options: {numeric: {bogus: 1}}}]", "numeric takes no option 'bogus'"),
    ("[{name: verifier}, {name: eos, options: {eos_token: '<|im_end|>'}}]", "use eos_penalty"),
])
def test_reward_term_options_are_checked(chain, rewards, says):
    [p] = problems(chain[0], [f"stages.rlvr.rewards={rewards}"])
    assert "stages.rlvr.rewards[" in p and says in p, p


def test_options_a_verifier_takes_validate(chain):
    load(chain[0], ["stages.rlvr.rewards=[{name: verifier, options: {numeric: {extract: [answer_is]}}}, "
                    "{name: length, options: {budget_chars: 100, time_limit_s: 1}}]"])


def test_the_eos_token_option_wins_over_the_rows_finish_reason():
    from posttrain.rewards import get_verifier

    eos = get_verifier("eos", eos_token="<|im_end|>")
    assert eos("cut at the length limit", {"finish_reason": "stop"}).score == 0.0
    assert eos("done<|im_end|>", {"finish_reason": "length"}).score == 1.0
