"""The demo over seeds: run recipes/tiny.yaml once per seed (finished stages are cached, so a rerun only
prints) and print the table of all those runs with the margins of base < SFT < DPO <= RLVR (on the mean
over skills), then each run's score per skill.

    python bench/demo_seeds.py --seeds 0 1 2                  # runs/tiny-seed{N}, one run at a time
    python bench/demo_seeds.py --seeds 0 1 2 --no-run         # just the table of the runs that finished
    python bench/demo_seeds.py --seeds 0 --runs-dir runs/tf523 # e.g. one folder per transformers version

Each run takes 10+ minutes of one core. The exit code is 1 when a finished run breaks the shape.
"""
import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_numbers import MODELS, run_numbers  # noqa: E402

from posttrain.eval.metrics import points  # noqa: E402  (the report's rounding: its changes and these margins agree)

REPO = Path(__file__).resolve().parents[1]
# (lower, higher, strictly): each stage gains on the one before, except that RLVR may tie DPO.
SHAPE = [("base", "sft", True), ("sft", "dpo", True), ("dpo", "rlvr", False)]


def margins(scores: dict[str, float]) -> dict[str, float]:
    return {f"{lo}->{hi}": scores[hi] - scores[lo] for lo, hi, _ in SHAPE}


def holds(scores: dict[str, float]) -> bool:
    """base < SFT < DPO <= RLVR."""
    return all(scores[hi] > scores[lo] if strict else scores[hi] >= scores[lo] for lo, hi, strict in SHAPE)


def run_demo(seed: int, run_dir: Path) -> int:
    cmd = [sys.executable, "-m", "posttrain.cli", "run", str(REPO / "recipes" / "tiny.yaml"), f"vars.seed={seed}",
           "--out", str(run_dir)]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    ap.add_argument("--no-run", action="store_true", help="only tabulate runs that already finished")
    args = ap.parse_args(argv)
    rows = []
    for seed in args.seeds:
        run_dir = args.runs_dir / f"tiny-seed{seed}"
        if not args.no_run and run_demo(seed, run_dir) != 0:
            print(f"seed {seed}: the demo failed; see {run_dir}/*/stage.log")
        if (run_dir / "eval" / "results" / "results.json").exists():
            rows.append(run_numbers(run_dir))
    if not rows:
        print("no finished run")
        return 1
    head = ["seed"] + MODELS + [f"{lo}->{hi}" for lo, hi, _ in SHAPE] + ["shape", "minutes", "transformers"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        s = r["scores"]
        print(f"| {r['seed']} | " + " | ".join(points(s[m]) for m in MODELS) + " | " +
              " | ".join(points(v, signed=True) for v in margins(s).values()) +
              f" | {'holds' if holds(s) else 'BROKEN'} | {r['minutes']:.1f} | {r['versions']['transformers']} |")
    if any(r.get("skills") for r in rows):
        print("\n| seed | skill | " + " | ".join(MODELS) + " |\n|" + "---|" * (len(MODELS) + 2))
        for r in rows:
            for skill, s in r["skills"].items():
                print(f"| {r['seed']} | {skill} | " + " | ".join(points(s[m]) for m in MODELS) + " |")
    return 0 if all(holds(r["scores"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
