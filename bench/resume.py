"""Restart cost after a kill: time from launching `posttrain run` again to its first new training step,
against the same stage's cold start (launch to first step), measured in the same run on the mini chain's
SFT stage. Steps are read from the stage's metrics.jsonl, whose rows carry wall-clock times.

    OMP_NUM_THREADS=1 nice -n 10 python bench/resume.py [--steps 60] [--kill-after 30] [--repeats 2]
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import MINI_RECIPE, write_mini_files  # noqa: E402

from posttrain.recipe import load  # noqa: E402
from posttrain.runner import run  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def launch(recipe: Path, run_dir: Path, overrides: list[str]) -> tuple[subprocess.Popen, float]:
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "run", str(recipe), "--out", str(run_dir), *overrides],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return proc, time.time()


def first_step_after(metrics: Path, step: int, since: float, timeout: float = 600) -> float:
    """Wall-clock time of the first training step > `step` logged after `since` (older rows are the killed run's)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists():
            for row in map(json.loads, metrics.read_text().splitlines()):
                if row.get("step", 0) > step and "loss" in row and row["time"] > since:
                    return row["time"]
        time.sleep(0.02)
    raise TimeoutError(f"no step after {step} in {metrics}")


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: forked reward workers too
    proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--kill-after", type=int, default=30, help="kill once this step's checkpoint is complete")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    sft = write_mini_files(root)[0]
    recipe = root / "mini.yaml"
    recipe.write_text(MINI_RECIPE.replace("SFT_DATA", str(sft)))
    overrides = [f"stages.sft.train.max_steps={a.steps}", "stages.sft.train.save_steps=10", "stages.sft.train.logging_steps=1"]
    run_dir = root / "run"
    run(load(recipe, overrides), run_dir, echo=lambda m: None)  # upstream stages finished and cached
    metrics = run_dir / "sft" / "metrics.jsonl"
    checkpoint = run_dir / "sft" / "checkpoints" / f"checkpoint-{a.kill_after}" / "trainer_state.json"

    cold, warm = [], []
    for _ in range(a.repeats):
        shutil.rmtree(run_dir / "sft", ignore_errors=True)
        proc, start = launch(recipe, run_dir, overrides)
        cold.append(first_step_after(metrics, 0, start) - start)
        while not checkpoint.exists():
            time.sleep(0.01)
        kill(proc)
        proc, start = launch(recipe, run_dir, overrides)
        warm.append(first_step_after(metrics, a.kill_after, start) - start)
        proc.wait()
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"SFT stage, mini chain: cold start to first step {c:.2f} s; restart after kill -9 to first new step {w:.2f} s "
          f"(ratio {w / c:.2f})")


if __name__ == "__main__":
    main()
