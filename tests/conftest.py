import os
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis draws the same examples on every run: a suite's verdict must not depend on the run. New cases are
# found by raising max_examples locally, or with HYPOTHESIS_PROFILE=explore.
settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

from children import Session, held_locks, kill_process, run_with_deadline

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SLOW_TIMEOUT_S = 3600  # pytest-timeout's limit for @slow tests; the others get pyproject's `timeout`
SESSION = Session()


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


@pytest.fixture(scope="session", autouse=True)
def no_leftovers(tmp_path_factory):
    """After the suite no process a test started is alive and no run-folder lock is held; leftovers are
    killed, and the suite fails naming them."""
    yield
    guard = sys.modules.get("posttrain.rewards.guard")
    if guard is not None:  # the reward workers this process keeps for reuse, stopped as at its exit
        guard._stop_all()
    alive = SESSION.processes()
    for pid in alive:
        kill_process(pid)
    locks = held_locks(tmp_path_factory.getbasetemp())
    SESSION.close()
    assert not alive and not locks, f"left behind by the tests: processes {alive}, run locks held {locks}"

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

    from posttrain.worlds import tinyworld

    sft, prefs = root / "sft.jsonl", root / "prefs.jsonl"
    rows = tinyworld.sft_candidate_rows(200, seed=1, mix={"arith": 1.0})  # the tutor and the guesser
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


def posttrain_cli(*args, cwd=None, check=False, timeout=240):
    """Run the real console command in a subprocess (its own process group, killed at the deadline)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = run_with_deadline([sys.executable, "-m", "posttrain.cli", *args], timeout, cwd=cwd, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"posttrain {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_mini_chain(root: Path) -> Path:
    """The mini chain through DPO and RLVR, on fresh data files in `root`; returns the recipe's path."""
    sft, prefs = write_mini_files(root)
    recipe = root / "mini.yaml"
    recipe.write_text(MINI_RECIPE.replace("SFT_DATA", str(sft)) + MINI_PREFERENCE_TAIL.replace("PREF_DATA", str(prefs)))
    return recipe


SMOLLM2 = "builtin:smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2_cut():
    """The real SmolLM2-135M-Instruct cut to its first 2 layers (real tokenizer, template and weights), converted
    once into the user's posttrain cache (~40 s the first time on this machine, then free)."""
    from posttrain import packaged

    return packaged.cut(SMOLLM2, layers=2)
