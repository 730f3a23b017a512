"""An eval stage that re-runs because one of its models changed reuses every other model's results
(eval/reuse.py): only the changed model is loaded and evaluated again; changed settings reuse nothing."""
import json

import pytest

import posttrain.eval.suite as suite
from posttrain import hf
from posttrain.recipe import load
from posttrain.runner import run
from posttrain.worlds import tinyworld

ARCH = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
            initializer_range=0.3)
RECIPE = """
name: reuse
stages:
  eval:
    kind: eval
    models: {kept: KEPT, changed: CHANGED}
    tasks: [{name: tinyworld, limit: 4}, {name: tinyworld_code, limit: 3}]
    max_new_tokens: 16
    batch_size: 4
"""


def save_tiny(path, seed):
    tokenizer = tinyworld.build_tokenizer()
    hf.save_model(tinyworld.build_model(tokenizer, seed=seed, **ARCH), tokenizer, path)


@pytest.fixture
def loads(monkeypatch):
    """The model folders the eval stage loads, in order (the real loader, watched)."""
    seen, real = [], suite.load_model_and_tokenizer
    monkeypatch.setattr(suite, "load_model_and_tokenizer", lambda path: seen.append(path) or real(path))
    return seen


def results(run_dir):
    manifest = json.loads((run_dir / "eval" / "manifest.json").read_text())
    folder = run_dir / manifest["artifacts"]["results"]
    data = json.loads((folder / "results.json").read_text())
    return manifest, {(label, task): (entry["reused"], (folder / entry["samples"]).read_text())
                      for label, m in data["models"].items() for task, entry in m["tasks"].items()}


def test_only_the_changed_model_is_evaluated_again(tmp_path, loads):
    kept, changed = tmp_path / "kept", tmp_path / "changed"
    save_tiny(kept, 0)
    save_tiny(changed, 1)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("KEPT", str(kept)).replace("CHANGED", str(changed)))
    run_dir = tmp_path / "run"
    run(load(recipe), run_dir, echo=lambda m: None)
    _, first = results(run_dir)
    assert loads == [str(kept), str(changed)] and not any(r for r, _ in first.values())

    save_tiny(changed, 2)  # as when only RLVR is retrained: the eval stage's fingerprint changes
    loads.clear()
    steps = run(load(recipe), run_dir, echo=lambda m: None)
    assert [s.action for s in steps] == ["run"]
    manifest, second = results(run_dir)
    assert loads == [str(changed)] and manifest["metrics"]["reused_results"] == 2
    for task in ("tinyworld", "tinyworld_code"):
        assert second[("kept", task)] == (True, first[("kept", task)][1])
        assert second[("changed", task)][0] is False
    assert second[("changed", "tinyworld")][1] != first[("changed", "tinyworld")][1]

    loads.clear()  # another setting of the eval: nothing can be reused
    run(load(recipe, ["stages.eval.max_new_tokens=12"]), run_dir, echo=lambda m: None)
    assert loads == [str(kept), str(changed)] and results(run_dir)[0]["metrics"]["reused_results"] == 0
