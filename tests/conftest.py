import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

# A small but real chain (built-in data -> pretrained base -> SFT) sized for tests: a few seconds per stage.
MINI_RECIPE = """
name: mini
stages:
  data:
    kind: tinyworld
    pretrain_rows: 300
    sft_rows: 200
    rl_rows: 50
  base:
    kind: pretrain
    model: builtin:tiny
    data: ${stages.data.output.pretrain}
    architecture: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2, intermediate_size: 64}
    max_length: 96
    train: {learning_rate: 3.0e-3, max_steps: 8, per_device_train_batch_size: 8, save_steps: 4, logging_steps: 2}
  sft:
    kind: sft
    model: ${stages.base.output.model}
    data: SFT_DATA
    max_length: 160
    train: {learning_rate: 3.0e-3, max_steps: 12, per_device_train_batch_size: 8, save_steps: 3, logging_steps: 1}
"""

# The mini chain continued through DPO (on a preference file) and RLVR (on the tiny world's RL prompts).
MINI_PREFERENCE_TAIL = """
  dpo:
    kind: dpo
    model: ${stages.sft.output.model}
    data: PREF_DATA
    max_length: 160
    train: {learning_rate: 1.0e-3, max_steps: 8, per_device_train_batch_size: 4, save_steps: 2, logging_steps: 1}
  rlvr:
    kind: rlvr
    model: ${stages.dpo.output.model}
    data: ${stages.data.output.rl}
    num_generations: 4
    max_completion_length: 24
    train: {learning_rate: 1.0e-3, max_steps: 6, per_device_train_batch_size: 8, save_steps: 2, logging_steps: 1}
"""


def write_mini_files(root: Path) -> tuple[Path, Path]:
    """SFT (prompt/completion, the correct teacher) and preference (tutor vs guesser) files."""
    import json

    from posttrain import tinyworld

    sft, prefs = root / "sft.jsonl", root / "prefs.jsonl"
    rows = tinyworld.sft_candidate_rows(200, seed=1)
    with open(sft, "w") as f, open(prefs, "w") as g:
        for row in rows:
            by_source = {c["source"]: c["response"] for c in row["candidates"]}
            f.write(json.dumps({"prompt": row["prompt"], "completion": by_source["tutor"]}) + "\n")
            g.write(json.dumps({"prompt": row["prompt"], "chosen": by_source["tutor"], "rejected": by_source["guesser"]}) + "\n")
    return sft, prefs


@pytest.fixture
def sft_file(tmp_path):
    return write_mini_files(tmp_path)[0]




def write_recipe(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def posttrain_cli(*args, cwd=None, check=False, timeout=600):
    """Run the real console command in a subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "posttrain.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"posttrain {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_mini_chain(root: Path) -> Path:
    """The mini chain through DPO and RLVR, on fresh data files in `root`; returns the recipe's path."""
    sft, prefs = write_mini_files(root)
    recipe = root / "mini.yaml"
    recipe.write_text(MINI_RECIPE.replace("SFT_DATA", str(sft)) + MINI_PREFERENCE_TAIL.replace("PREF_DATA", str(prefs)))
    return recipe
