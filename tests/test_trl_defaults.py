"""posttrain's defaults against TRL 1.16's (issue 26 item 18): every default that differs is documented with
TRL's value and why (posttrain/trl_defaults.py, shown in docs/stages.md and by `posttrain config`), every value
there is TRL's own, and no other default differs."""
import dataclasses

import pytest
import trl

import posttrain.stages  # noqa: F401  (registers the stage kinds)
from posttrain.schema import field_default
from posttrain.stage import STAGES
from posttrain.training import TrainArgs
from posttrain.trl_defaults import SAME_MEANING, TRL_CONFIG, table


def _ours(kind: str) -> dict:
    """Every default of the kind, TrainArgs keys as train.KEY (the kind's own train block: DPO's lr is 5e-7)."""
    fields = {f.name: field_default(f) for f in dataclasses.fields(STAGES[kind].Config)}
    train = fields.pop("train")
    return {**fields, **{f"train.{f.name}": getattr(train, f.name) for f in dataclasses.fields(TrainArgs)}}


@pytest.mark.parametrize("kind", sorted(TRL_CONFIG))
def test_every_default_that_differs_from_trl_is_documented_with_trls_own_value(kind):
    trl_fields = {f.name: field_default(f) for f in dataclasses.fields(getattr(trl, TRL_CONFIG[kind]))}
    differs = {key: trl_fields[key.removeprefix("train.")] for key, ours in _ours(kind).items()
               if key.removeprefix("train.") in trl_fields and key.removeprefix("train.") not in SAME_MEANING
               and ours != trl_fields[key.removeprefix("train.")]}
    documented = table(kind)
    assert set(documented) == set(differs), (kind, set(differs) ^ set(documented))
    assert {key: value for key, (value, _) in documented.items()} == differs
    assert all(why for _, why in documented.values())


def test_docs_and_config_show_trls_value(tmp_path, capsys):
    from conftest import write_mini_chain
    from posttrain.cli import main

    docs = (__import__("conftest").REPO / "docs" / "stages.md").read_text()
    assert "| `train.learning_rate` | float | 5e-07 |  (gt 0) TRL 1.16's default: `1e-06`; ours differs: " in docs
    recipe = write_mini_chain(tmp_path)
    assert main(["config", str(recipe), "--stage", "rlvr"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[0] == "train.seed" and line.endswith("[default, TRL: 42]") for line in out.splitlines())
    assert any(line.split()[0] == "beta" and line.endswith("[default]") for line in out.splitlines())
