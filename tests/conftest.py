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


@pytest.fixture
def sft_file(tmp_path):
    """A prompt/completion SFT file made from the tiny world's correct teacher."""
    import json

    from posttrain import tinyworld

    path = tmp_path / "sft.jsonl"
    with open(path, "w") as f:
        for row in tinyworld.sft_candidate_rows(200, seed=1):
            tutor = next(c for c in row["candidates"] if c["source"] == "tutor")
            f.write(json.dumps({"prompt": row["prompt"], "completion": tutor["response"]}) + "\n")
    return path


@pytest.fixture
def mini_recipe(tmp_path, sft_file):
    path = tmp_path / "mini.yaml"
    path.write_text(MINI_RECIPE.replace("SFT_DATA", str(sft_file)))
    return path


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
