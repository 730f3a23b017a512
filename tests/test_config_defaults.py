"""No silent default: a key's default is the same whether or not its siblings are set; `posttrain config`
shows every resolved value with its source; numbers in any YAML 1.2 form are numbers."""
import dataclasses
import typing
from typing import Any, Literal, Union

import pytest
import yaml

import posttrain.stages  # noqa: F401  (registers the stage kinds)
from conftest import write_recipe
from posttrain import schema
from posttrain.cli import main
from posttrain.recipe import YamlLoader, load
from posttrain.stage import ARTIFACT_TYPES, STAGES, make_ref

OUTPUT_OF = {tp: name.lower() for name, tp in ((t.__name__, t) for t in ARTIFACT_TYPES.values())}


def sample(tp) -> Any:
    """A valid recipe value for annotation `tp`: only required keys filled, artifacts as references."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in OUTPUT_OF:
        return make_ref("up", OUTPUT_OF[tp])  # what ${stages.up.output.X} resolves to
    if origin in (Union, typing.get_origin(int | None)):
        return sample(next(a for a in args if a is not type(None)))
    if origin is Literal:
        return args[0]
    if origin is list:
        return [sample(args[0])]
    if origin is dict:
        return {"a": sample(args[1])}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return {f.name: sample(hints[f.name]) for f in dataclasses.fields(tp)
                if schema.field_default(f) is dataclasses.MISSING}
    return {int: 1, float: 1.0, bool: False, str: "x"}.get(tp, "x")


def build(cls, data):
    problems = []
    ref_type = {name: tp for tp, name in OUTPUT_OF.items()}
    config = schema.build(cls, data, "", problems, lambda stage, output: ref_type[output])
    assert not problems and config is not None, problems
    return config


NESTED = [(kind, f.name, sibling.name) for kind, stage in sorted(STAGES.items())
          for f in dataclasses.fields(stage.Config) if dataclasses.is_dataclass(schema.field_default(f))
          for sibling in dataclasses.fields(schema.field_default(f))]


def test_every_kind_with_a_nested_block_is_covered():
    assert {"dpo", "sft", "rlvr", "pretrain", "select"} <= {kind for kind, _, _ in NESTED}


@pytest.mark.parametrize("kind,block,sibling", NESTED, ids=[".".join(n) for n in NESTED])
def test_setting_one_key_of_a_block_keeps_the_others_defaults(kind, block, sibling):
    cls = STAGES[kind].Config
    minimal = sample(cls)
    default = build(cls, minimal)
    # Set one key to the value it has anyway: the whole config must not change (before the fix DPO's
    # train.learning_rate jumped from 5e-7 to 1e-5 as soon as any train key was set).
    value = getattr(getattr(default, block), sibling)
    plain = value if not dataclasses.is_dataclass(value) else sample(type(value))
    assert build(cls, {**minimal, block: {sibling: plain}}) == default


def test_dpo_learning_rate_stays_5e7_when_another_train_key_is_set():
    cls = STAGES["dpo"].Config
    minimal = sample(cls)
    config = build(cls, {**minimal, "train": {"num_train_epochs": 2}})
    assert config.train.learning_rate == 5e-7 and config.train.num_train_epochs == 2.0
    assert ("train.learning_rate", "float", "5e-07", "(gt 0)") in [r[:3] + (r[3].strip(),) for r in schema.describe(cls)]


RECIPE = """
name: demo
stages:
  data:
    kind: tinyworld
    sft_rows: 10
  pairs:
    kind: tinyworld
  dpo:
    kind: dpo
    model: builtin-model
    data: ${stages.data.output.sft_candidates}
    beta: 0.2
    train: {num_train_epochs: 1, learning_rate: LR}
"""


def test_config_command_shows_every_value_and_its_source(tmp_path, capsys):
    path = write_recipe(tmp_path, RECIPE.replace("LR", "1e-6"))
    assert main(["config", str(path), "stages.dpo.train.save_steps=7", "--stage", "dpo"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line.strip()}
    assert rows["beta"] == ["0.2", "[recipe]"]
    assert rows["train.learning_rate"] == ["1e-06", "[recipe]"]  # 1e-6: a number in YAML 1.2
    assert rows["train.save_steps"] == ["7", "[override]"]
    assert rows["train.logging_steps"] == ["5", "[default,", "TRL:", "10]"]  # TRL 1.16's default differs
    assert rows["train.weight_decay"] == ["0.0", "[default]"]
    # a reference as written, and the file it resolves to in the run folder
    assert rows["data"] == ['"${stages.data.output.sft_candidates}', "=", 'runs/demo/data/sft_candidates.jsonl"', "[recipe]"]
    assert len(rows) == len(schema.leaves(load(path).stages["dpo"].config))
    assert out.startswith("dpo (dpo)") and "pairs (" not in out


def test_config_without_stage_prints_all_stages_and_unknown_stage_exits_2(tmp_path, capsys):
    path = write_recipe(tmp_path, RECIPE.replace("LR", "1e-6"))
    assert main(["config", str(path)]) == 0
    out = capsys.readouterr().out
    assert all(f"{s} (" in out for s in ("data", "pairs", "dpo"))
    assert main(["config", str(path), "--stage", "dpx"]) == 2
    assert "no such stage" in capsys.readouterr().err


@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("1.0e3", 1000.0), ("-2E+5", -2e5), ("5.", 5.0), (".5", 0.5),
                                        ("0o17", 15), ("0x1F", 31), ("+3", 3), ("-.inf", float("-inf"))])
def test_yaml_12_numbers_are_numbers(text, value):
    assert yaml.load(text, Loader=YamlLoader) == value


@pytest.mark.parametrize("text", ["1e", "e3", "1.2.3", "0o8", "abc"])
def test_non_numbers_stay_strings(text):
    assert yaml.load(text, Loader=YamlLoader) == text


def test_exponent_learning_rate_in_recipe_and_override(tmp_path):
    path = write_recipe(tmp_path, RECIPE.replace("LR", "3e-4"))
    assert load(path).stages["dpo"].config.train.learning_rate == 3e-4
    assert load(path, ["stages.dpo.train.learning_rate=2e-5"]).stages["dpo"].config.train.learning_rate == 2e-5


def test_config_sources_of_block_vars_and_index_overrides(tmp_path, capsys):
    """A block override replaces the block (its keys not given are defaults, with a warning naming the recipe's
    dropped keys); a vars override marks what interpolates it; tasks[0] and tasks.-1 name list items."""
    path = write_recipe(tmp_path, """
name: sources
vars: {seed: 3}
stages:
  data: {kind: tinyworld, sft_rows: 10}
  sft:
    kind: sft
    model: org/model
    data: ${stages.data.output.sft_candidates}
    train: {learning_rate: 1.0e-4, max_steps: 4, seed: "${vars.seed}"}
  eval:
    kind: eval
    models: {m: org/model}
    tasks: [{name: tinyworld, limit: 10}, {name: tinyworld_code, limit: 10}]
""")
    assert main(["config", str(path), "stages.sft.train={max_steps: 3, seed: 1}", "vars.seed=5",
                 "stages.eval.tasks[0].limit=20", "stages.eval.tasks.-1.limit=30"]) == 0
    captured = capsys.readouterr()
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in captured.out.splitlines() if line.startswith("  ")}
    assert rows["train.max_steps"] == "3 [override]" and rows["train.learning_rate"].startswith("1e-05 [default")
    assert "the recipe's learning_rate no longer apply" in captured.err
    assert main(["config", str(path), "vars.seed=5", "--stage", "sft"]) == 0
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert rows["train.seed"] == "5 [override]" and rows["train.learning_rate"] == "0.0001 [recipe]"
    assert main(["config", str(path), "stages.eval.tasks[0].limit=20", "stages.eval.tasks.-1.limit=30", "--stage", "eval"]) == 0
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert rows["tasks[0].limit"] == "20 [override]" and rows["tasks[1].limit"] == "30 [override]"
