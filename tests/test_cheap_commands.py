"""validate, plan, config and inspect must stay cheap on the demo recipe: none of them may import torch
(torch and the libraries on it cost ~18 s of CPU; checking a non-default scheduler name once did)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each command in the same interpreter, then which heavy modules it left imported.
PROBE = """
import sys
from posttrain.cli import main
for command in ("validate", "plan", "config", "inspect"):
    main([command, "recipes/tiny.yaml", "--out", sys.argv[1]])
    heavy = sorted(m for m in ("torch", "transformers.trainer_utils", "trl", "peft") if m in sys.modules)
    print(command, "imported", ",".join(heavy) or "nothing heavy", file=sys.stderr)
"""


def test_cheap_commands_on_the_demo_recipe_do_not_import_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "run")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if " imported " in line]
    assert [line.split()[0] for line in lines] == ["validate", "plan", "config", "inspect"], proc.stderr[-3000:]
    assert all(line.endswith("imported nothing heavy") for line in lines), lines


def test_a_non_default_scheduler_name_is_still_checked_against_transformers():
    from posttrain.recipe import RecipeError, load

    try:
        load(ROOT / "recipes/tiny.yaml", ["stages.sft.train.lr_scheduler_type=cosin", "stages.dpo.train.optim=adamw"])
    except RecipeError as e:
        text = str(e)
    else:
        raise AssertionError("an unknown scheduler name passed validation")
    assert "unknown lr_scheduler_type 'cosin'" in text and "did you mean 'cosine'" in text, text
    assert "unknown optim 'adamw'" in text and "adamw_torch" in text, text


def test_scheduler_arguments_read_from_source_equal_the_functions_signatures():
    """validate reads each schedule's arguments from transformers' source (no torch): the same as inspecting them."""
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION

    from posttrain.train_checks import _scheduler_arguments

    for kind, function in TYPE_TO_SCHEDULER_FUNCTION.items():
        params = inspect.signature(function).parameters.values()
        expected = ([p.name for p in params if p.kind is not p.VAR_KEYWORD], any(p.kind is p.VAR_KEYWORD for p in params))
        assert _scheduler_arguments(kind.value) == expected, kind
