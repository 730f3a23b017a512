"""recipes/smollm2.yaml (the real model, docs/real-model.md) over seeds: run it once per seed, then print the
markdown tables of docs/real-model.md: each stage's wall time per seed, the scores of base / SFT / DPO / RLVR per
task pooled over the seeds, and which stage-to-stage changes are real.

    python bench/real_seeds.py --seeds 0 1                 # runs/smollm2-seed{N}, one run at a time
    python bench/real_seeds.py --seeds 0 1 --no-run        # only the tables of the runs that finished

The base model's eval (stage eval_base: greedy, no seed) is the same in every seed: the first seed's finished
eval_base folder is copied into each later run folder, where the store finds it finished with the same
fingerprint and does not run it again. Pooled scores count the base model's items once, every fine-tuned model's
items once per seed (each seed trains other models). Paired tests compare two models on the same items of the
same seed: exact McNemar per task, a paired z-test for the average over tasks, Holm-adjusted over the table.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from posttrain.eval.metrics import wilson_ci
from posttrain.eval.skills import change_markdown, paired, per_item

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "smollm2.yaml"
EVALS = ("eval_base", "eval")
SEED_FREE = {"base"}  # models whose items are the same in every seed
STEPS = [("base", "sft"), ("sft", "dpo"), ("dpo", "rlvr"), ("base", "rlvr")]


def run_seed(seed: int, out: Path, first: Path | None, overrides: list[str]) -> int:
    if first is not None and not (out / "eval_base").exists() and (first / "eval_base" / "manifest.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(first / "eval_base", out / "eval_base")
    cmd = [sys.executable, "-m", "posttrain.cli", "run", str(RECIPE), f"vars.seed={seed}", *overrides, "--out", str(out)]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))}).returncode


def finished(run: Path) -> bool:
    return all((run / e / "results" / "results.json").exists() for e in EVALS)


def pooled(runs: list[Path]) -> tuple[dict, list[str]]:
    """{task: {model: {item key: score}}} over the runs, and the model labels in the recipe's order."""
    items, labels = {}, []
    for run in runs:
        for stage in EVALS:
            folder = run / stage / "results"
            results = json.loads((folder / "results.json").read_text())
            labels += [m for m in results["models"] if m not in labels]
            for task, by_model in per_item(results, folder).items():
                for model, scores in by_model.items():
                    prefix = "" if model in SEED_FREE else f"{run.name}:"
                    items.setdefault(task, {}).setdefault(model, {}).update({prefix + i: s for i, s in scores.items()})
    return items, labels


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def time_table(runs: list[Path]) -> str:
    stages = [p.parent.name for p in sorted(runs[0].glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)]
    lines = ["| stage | " + " | ".join(r.name for r in runs) + " |", "|---|" + "---|" * len(runs)]
    totals = [0.0] * len(runs)
    for stage in stages:
        cells = []
        for i, run in enumerate(runs):
            m = json.loads((run / stage / "manifest.json").read_text()) if (run / stage / "manifest.json").exists() else {}
            seconds = m.get("wall_time_s") or 0.0
            totals[i] += seconds
            cells.append(f"{seconds / 60:.1f}" + (" (seed 0's)" if stage == "eval_base" and i else ""))
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| **total, minutes** | " + " | ".join(f"**{t / 60:.1f}**" for t in totals) + " |")
    return "\n".join(lines)


def score_table(items: dict, labels: list[str], runs: list[Path]) -> str:
    lines = ["| task | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for task, by_model in items.items():
        cells = []
        for m in labels:
            v = np.array(list(by_model[m].values()))
            lo, hi = wilson_ci(int(v.sum()), len(v))
            seeds = "" if m in SEED_FREE else " [" + " / ".join(
                pct(np.mean([s for k, s in by_model[m].items() if k.startswith(f"{r.name}:")])) for r in runs) + "]"
            cells.append(f"{pct(v.mean())} ({pct(lo)}–{pct(hi)}, n={len(v)}){seeds}")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_pairs(a: dict[str, float], b: dict[str, float], runs: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """a's and b's scores on the same items of the same seed (a seed-free model's items pair with every seed's)."""
    def keyed(d):
        return d if any(":" in k for k in d) else {f"{r.name}:{k}": s for r in runs for k, s in d.items()}
    return paired(keyed(a), keyed(b))


def compare_table(items: dict, runs: list[Path]) -> str:
    tasks = list(items)
    return change_markdown([(after, before) for before, after in STEPS], tasks, tasks,
                           lambda t, a, b: seed_pairs(items[t][b], items[t][a], runs), "change")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    ap.add_argument("--no-run", action="store_true", help="only tabulate runs that already finished")
    ap.add_argument("overrides", nargs="*", help="recipe overrides for every seed, e.g. vars.eval_limit=100")
    args = ap.parse_args(argv)
    runs = [args.runs_dir / f"smollm2-seed{s}" for s in args.seeds]
    for seed, run in zip(args.seeds, runs):
        if not args.no_run and run_seed(seed, run, runs[0] if run != runs[0] else None, args.overrides) != 0:
            print(f"seed {seed}: the run failed; see {run}/*/stage.log")
    runs = [r for r in runs if finished(r)]
    if not runs:
        print("no finished run")
        return 1
    items, labels = pooled(runs)
    print("## Stage wall time, minutes\n\n" + time_table(runs))
    print("\n## Scores, % (95% Wilson CI, n) [per seed]\n\n" + score_table(items, labels, runs))
    print("\n## Changes, points (Holm-adjusted p; bold: p < 0.05)\n\n" + compare_table(items, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
