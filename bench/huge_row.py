"""Cost of one huge row: the SFT and DPO stages of the mini chain on their normal files, and on the same files
plus one valid row of `--mb` megabytes, each stage a `posttrain run --only` process of its own, measured in
the same run: wall time and that process's peak RSS, and the huge/normal ratios.

A stage cuts each message where it can no longer reach the first max_length tokens (formats.content_budget),
so the huge row should cost about what max_length costs: ratios near 1, not the row's size (before the cut,
a 5 MB row took an SFT run from 15 s and 0.57 GB to 57 s and 2.97 GB).

    OMP_NUM_THREADS=1 nice -n 10 python bench/huge_row.py [--mb 5]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import MINI_RECIPE, write_mini_files  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
STAGE_TAIL = "\n    max_length: 160\n    train: {learning_rate: 1.0e-3, max_steps: 4, per_device_train_batch_size: 4, logging_steps: 1}\n"


def recipe(root: Path, mb: float) -> Path:
    """The mini chain's data and base, then SFT and DPO stages on normal files and on files with one huge row."""
    sft, prefs = write_mini_files(root)
    huge = "4 " * int(mb * 1024 * 1024 / 2)  # digits and spaces: every character in the tiny model's vocabulary
    (root / "sft_huge.jsonl").write_text(sft.read_text() + json.dumps({"prompt": "What is 2+2?", "completion": huge}) + "\n")
    (root / "prefs_huge.jsonl").write_text(prefs.read_text() + json.dumps(
        {"prompt": "What is 2+2?", "chosen": huge, "rejected": "5"}) + "\n")
    text = MINI_RECIPE.split("  sft:")[0]
    for name, path in [("sft_normal", sft), ("sft_huge", root / "sft_huge.jsonl")]:
        text += f"  {name}:\n    kind: sft\n    model: ${{stages.base.output.model}}\n    data: {path}" + STAGE_TAIL
    for name, path in [("dpo_normal", prefs), ("dpo_huge", root / "prefs_huge.jsonl")]:
        text += f"  {name}:\n    kind: dpo\n    model: ${{stages.base.output.model}}\n    data: {path}" + STAGE_TAIL
    path = root / "huge.yaml"
    path.write_text(text)
    return path


def measured(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one posttrain command, from its own rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"posttrain {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.read().decode()[-3000:]}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=5.0, help="size of the huge row")
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-huge-row-"))
    path, out = recipe(root, a.mb), str(root / "run")
    for stage in ("data", "base"):
        measured(["run", str(path), "--out", out, "--only", stage])
    print(f"one row of {a.mb:g} MB in a file of 200 normal rows; max_length 160, 4 steps")
    print(f"{'stage':<6} {'normal s':>9} {'huge s':>8} {'ratio':>6} {'normal MB':>10} {'huge MB':>8} {'ratio':>6}")
    for kind in ("sft", "dpo"):
        (t0, m0), (t1, m1) = (measured(["run", str(path), "--out", out, "--only", f"{kind}_{case}"])
                              for case in ("normal", "huge"))
        print(f"{kind:<6} {t0:>9.1f} {t1:>8.1f} {t1 / t0:>6.2f} {m0:>10.0f} {m1:>8.0f} {m1 / m0:>6.2f}")


if __name__ == "__main__":
    main()
