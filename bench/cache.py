"""Cost of the bookkeeping: re-running a fully cached tiny recipe, and validating a 20-stage recipe.

- cached re-run: wall time of `posttrain run` on the finished mini chain (5 stages, every one cached, with
  the demo's non-default scheduler names), against the bare interpreter start-up and `import posttrain.cli`'s
  dependencies, measured in the same run (target < 5 s, most of it start-up).
- the demo recipe's cheap commands: `posttrain validate`, `plan` and `config` of recipes/tiny.yaml, and
  whether any of them imported torch (none may: tests/test_cheap_commands.py); with `--demo-run DIR` (a
  finished `make demo`, e.g. runs/tiny) also the demo's own cached re-run.
- validation: `load` of a 20-stage recipe in-process, against a 1-stage recipe, and `posttrain validate`
  of it as a command.

    OMP_NUM_THREADS=1 nice -n 10 python bench/cache.py [--repeats 3] [--demo-run runs/tiny]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_mini_chain  # noqa: E402

from posttrain.recipe import load  # noqa: E402
from posttrain.runner import run  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
ROOT = Path(__file__).resolve().parents[1]
# The demo's schedulers are not the default `linear`: checking their names must not import transformers' trainer.
DEMO_SCHEDULERS = ["stages.base.train.lr_scheduler_type=cosine", "stages.sft.train.lr_scheduler_type=constant"]
TORCH_PROBE = "import runpy, sys; sys.argv = ['posttrain', *sys.argv[1:]]; runpy.run_module('posttrain.cli', run_name='__main__')"


def wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, env=ENV, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def twenty_stages(sft_file: Path) -> str:
    """tinyworld -> pretrain -> 18 chained SFT stages: 20 stages, each referencing the previous."""
    lines = ["name: twenty", "stages:", "  data: {kind: tinyworld}",
             "  s1: {kind: pretrain, model: 'builtin:tiny', data: '${stages.data.output.pretrain}'}"]
    for i in range(2, 20):
        lines.append(f"  s{i}: {{kind: sft, model: '${{stages.s{i - 1}.output.model}}', data: {sft_file}, max_length: 160}}")
    return "\n".join(lines) + "\n"


def in_process(path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        load(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--demo-run", type=Path, help="a finished run of recipes/tiny.yaml: time its cached re-run too")
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    recipe = write_mini_chain(root)
    run_dir = root / "run"
    run(load(recipe, DEMO_SCHEDULERS), run_dir, echo=lambda m: None)

    python = wall([sys.executable, "-c", "pass"], a.repeats)
    imports = wall([sys.executable, "-c", "import posttrain.recipe, posttrain.runner"], a.repeats)
    cached = wall([sys.executable, "-m", "posttrain.cli", "run", str(recipe), *DEMO_SCHEDULERS,
                   "--out", str(run_dir)], a.repeats)
    print(f"cached re-run of the 5-stage mini chain: {cached:.2f} s (target < 5 s)")
    print(f"  bare interpreter start-up: {python:.2f} s; + importing posttrain's recipe/runner stack: {imports:.2f} s")
    print(f"  posttrain's own work on top of start-up and imports: {cached - imports:.2f} s "
          f"(cached / imports ratio {cached / imports:.2f})")

    big, small = root / "twenty.yaml", root / "one.yaml"
    big.write_text(twenty_stages(root / "sft.jsonl"))
    small.write_text("name: one\nstages:\n  data: {kind: tinyworld}\n")
    assert len(load(big).stages) == 20
    t20, t1 = in_process(big, a.repeats), in_process(small, a.repeats)
    validate = wall([sys.executable, "-m", "posttrain.cli", "validate", str(big)], a.repeats)
    print(f"validate 20 stages in-process: {t20 * 1000:.0f} ms; 1 stage: {t1 * 1000:.0f} ms (ratio {t20 / t1:.1f})")
    print(f"`posttrain validate` of the 20-stage recipe as a command: {validate:.2f} s "
          f"(imports alone {imports:.2f} s)")

    tiny = ROOT / "recipes" / "tiny.yaml"
    for command in ("validate", "plan", "config"):
        args = [command, str(tiny), "--out", str(a.demo_run or root / "tiny")]
        seconds = wall([sys.executable, "-m", "posttrain.cli", *args], a.repeats)
        print(f"`posttrain {command} recipes/tiny.yaml`: {seconds:.2f} s (imports alone {imports:.2f} s); "
              f"imports torch: {imports_torch(args)}")
    if a.demo_run:
        args = ["run", str(tiny), "--out", str(a.demo_run)]
        cached = wall([sys.executable, "-m", "posttrain.cli", *args], a.repeats)
        print(f"cached re-run of the finished demo ({a.demo_run}): {cached:.2f} s; imports torch: {imports_torch(args)}")


def imports_torch(args: list[str]) -> str:
    """Whether `posttrain ARGS` leaves torch imported (run once more, with an exit hook that looks)."""
    hook = "import atexit, sys; atexit.register(lambda: print('TORCH', 'torch' in sys.modules, file=sys.stderr)); "
    proc = subprocess.run([sys.executable, "-c", hook + TORCH_PROBE, *args], env=ENV, capture_output=True, text=True)
    return "yes" if "TORCH True" in proc.stderr else "no"


if __name__ == "__main__":
    main()
