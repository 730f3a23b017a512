"""PASER's setting on a real model (recipes/experiments/paser_real.yaml), per pruning method and seed, then held-out
answer perplexity of every arm (posttrain.eval.perplexity) and the tables of docs/experiments.md.

    python bench/paser_real.py --methods wanda --seeds 0 1 2 --full-seeds 0 --runs-dir DIR
    python bench/paser_real.py --methods wanda magnitude --seeds 0 1 2 --runs-dir DIR --no-run   # tables only
    python bench/paser_real.py --methods wanda --seeds 0 --eval-seeds 0 --runs-dir DIR    # + IFEval/HumanEval slices

Runs go to DIR/{method}-seed{N}. The stages that do not depend on the seed (the pool, the pruned model, PASER's and
IFD's selections) run in the first seed's folder and are copied into the others (the store sees the same
fingerprint), so every seed recovers the same pruned model. The full-pool arm trains on ten times the rows of the
others: only the --full-seeds run it. Perplexities: DIR/{run}/perplexity/{arm}.jsonl (the unpruned model's once,
DIR/original-perplexity.jsonl, the pruned model's DIR/{method}-none-perplexity.jsonl), one record per held-out item: the answer's summed NLL and its token count.
Comparisons pair two arms on the same items of the same seed: the mean per-item difference of NLL per token, as a
perplexity ratio, with a paired t-test over all (seed, item) pairs, Holm-adjusted over the table.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from posttrain.data import read_rows, write_rows
from posttrain.eval.perplexity import perplexity
from posttrain.eval.metrics import points, wilson_ci
from posttrain.eval.skills import change_markdown, holm, p_text, paired, per_item

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "experiments" / "paser_real.yaml"
METHODS = {"wanda": [], "magnitude": ["stages.pruned.method=magnitude", "stages.pruned.ratio=0.4",
                                      "stages.pruned.calibration=null"]}
SEED_FREE = ["pool", "pruned", "paser", "paser_no_ccg", "ifd"]
PER_SEED = ["random", "recover_paser", "recover_paser_no_ccg", "recover_random", "recover_ifd", "distill"]
ARMS = {"none": "pruned", "full": "recover_full", "random": "recover_random", "paser": "recover_paser",
        "paser_no_ccg": "recover_paser_no_ccg", "ifd": "recover_ifd", "distill": "distill"}
COMPARE = [("none", "original"), ("random", "none"), ("paser", "none"), ("paser", "random"), ("paser_no_ccg", "random"),
           ("paser", "paser_no_ccg"), ("ifd", "random"), ("distill", "random"), ("distill", "none"), ("full", "random")]
TASKS = {"gsm8k_0shot": 24, "mbpp": 24, "humaneval": 24}


def run_stages(run: Path, seed: int, method: str, stages: list[str]) -> None:
    for stage in stages:
        cmd = [sys.executable, "-m", "posttrain.cli", "run", str(RECIPE), f"vars.seed={seed}", *METHODS[method],
               "--only", stage, "--out", str(run)]
        print("$", " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode:
            raise SystemExit(f"{run / stage}: failed; see its stage.log")


def finished(run: Path, stage: str) -> dict | None:
    """The stage's manifest if it completed, else None."""
    path = run / stage / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else None
    return manifest if manifest and manifest["status"] == "complete" else None


def measure(model: Path, out: Path) -> list[dict]:
    """The held-out answers' NLL under one model, cached in `out`."""
    if out.exists():
        return read_rows(out)
    from posttrain import hf
    from posttrain.eval.perplexity import answer_items, answer_nll

    items = [item for task, n in TASKS.items() for item in answer_items(task, n)]
    loaded, tokenizer = hf.load_for_inference(str(model), dtype="float32")
    records = answer_nll(loaded, tokenizer, items)
    write_rows(out, records)
    print(f"{out}: perplexity {perplexity(records):.3f}", flush=True)
    return records


def collect(runs_dir: Path, method: str, seeds: list[int], model: str) -> dict[str, dict[int, list[dict]]]:
    """{arm: {seed: records}} for every arm whose model exists (measuring those not yet measured). A seed-free
    stage's model (the pruned one, copied into every seed's folder) is measured once per method."""
    original = measure(Path(model), runs_dir / "original-perplexity.jsonl")
    arms = {"original": {s: original for s in seeds}}
    for seed in seeds:
        run = runs_dir / f"{method}-seed{seed}"
        for arm, stage in ARMS.items():
            if manifest := finished(run, stage):
                out = (runs_dir / f"{method}-{arm}-perplexity.jsonl" if stage in SEED_FREE
                       else run / "perplexity" / f"{arm}.jsonl")
                arms.setdefault(arm, {})[seed] = measure(run / manifest["artifacts"]["model"], out)
    return arms


def bootstrap_ppl(records: list[dict], rng: np.random.Generator, n: int = 2000) -> tuple[float, float]:
    nll = np.array([r["nll"] for r in records])
    tokens = np.array([r["tokens"] for r in records])
    idx = rng.integers(0, len(records), (n, len(records)))
    values = np.exp(nll[idx].sum(1) / tokens[idx].sum(1))
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def ppl_table(arms: dict[str, dict[int, list[dict]]], seeds: list[int]) -> str:
    rng = np.random.default_rng(0)
    lines = ["| arm | " + " | ".join(TASKS) + " | all (95% CI) | per seed | seeds |", "|---" * (len(TASKS) + 4) + "|"]
    for arm, by_seed in arms.items():
        pooled = [r for s in sorted(by_seed) for r in by_seed[s]] if arm != "original" else by_seed[seeds[0]]
        lo, hi = bootstrap_ppl(pooled, rng)
        cells = [f"{perplexity([r for r in pooled if r['task'] == t]):.2f}" for t in TASKS]
        per_seed = " / ".join(f"{perplexity(by_seed[s]):.2f}" for s in sorted(by_seed))
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | **{perplexity(pooled):.2f}** ({lo:.2f}–{hi:.2f}) | {per_seed} | "
                     f"{len(by_seed) if arm != 'original' else '–'} |")
    return "\n".join(lines)


def compare_table(arms: dict[str, dict[int, list[dict]]]) -> str:
    from scipy.stats import ttest_rel

    rows = []
    for a, b in COMPARE:
        seeds = sorted(set(arms.get(a, {})) & set(arms.get(b, {})))
        if not seeds:
            continue
        pairs = [(x, y) for s in seeds for x, y in zip(arms[a][s], arms[b][s], strict=True)]
        assert all(x["id"] == y["id"] and x["tokens"] == y["tokens"] for x, y in pairs)
        per_token = np.array([(x["nll"] - y["nll"]) / x["tokens"] for x, y in pairs])
        total = sum(x["nll"] - y["nll"] for x, y in pairs) / sum(x["tokens"] for x, _ in pairs)
        better = int((per_token < 0).sum())
        rows.append((a, b, len(seeds), math.exp(total), better, len(pairs), ttest_rel(per_token, np.zeros_like(per_token)).pvalue))
    adjusted = holm([r[-1] for r in rows])
    lines = ["| comparison | perplexity ratio | items where the first is lower | seeds | p (Holm) |", "|---|---|---|---|---|"]
    for (a, b, n_seeds, ratio, better, n, _), p in zip(rows, adjusted):
        mark = "**" if p < 0.05 else ""
        lines.append(f"| {a} vs {b} | {mark}{ratio:.3f}{mark} | {better} / {n} | {n_seeds} | {p_text(p)} |")
    return "\n".join(lines)


def selection_table(runs_dir: Path, methods: list[str], seeds: list[int]) -> str:
    lines = ["| pruning | selection | rows kept | response words, mean | clusters (K) | CCG rejected | budget shortfall |",
             "|---|---|---|---|---|---|---|"]
    for method in methods:
        for stage in ["paser", "paser_no_ccg", "ifd", "random"]:
            summary_path = runs_dir / f"{method}-seed{seeds[0]}" / stage / "summary.json"
            if not summary_path.exists():
                continue
            summary = json.loads(summary_path.read_text())
            rows = read_rows(summary_path.parent / "data.jsonl")
            tokens = np.mean([len(r.get("output", "").split()) for r in rows]) if rows else 0
            p = summary.get("paser", {})
            lines.append(f"| {method} | {stage} | {summary['kept_rows']} | {tokens:.0f} words | {p.get('k', '–')} | "
                         f"{p.get('ccg_rejected', '–')} | {p.get('budget_shortfall', '–')} |")
    return "\n".join(lines)


def generation_tables(runs_dir: Path, method: str, seeds: list[int]) -> str:
    """The eval stage's scores (IFEval prompt-level strict, HumanEval pass@1) pooled over the seeds that ran it, and
    changes between arms on the same items (exact McNemar, Holm)."""
    items = {}
    for seed in seeds:
        folder = runs_dir / f"{method}-seed{seed}" / "eval" / "results"
        if not (folder / "results.json").exists():
            continue
        for task, by_arm in per_item(json.loads((folder / "results.json").read_text()), folder).items():
            for arm, scores in by_arm.items():
                items.setdefault(task, {}).setdefault(arm, {}).update({f"{seed}:{k}": v for k, v in scores.items()})
    if not items:
        return ""
    tasks = list(items)
    arms = [a for a in ["original", *ARMS] if all(a in items[t] for t in tasks)]
    lines = ["| arm | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for arm in arms:
        cells = []
        for t in tasks:
            scores = items[t][arm]
            first = min(k.split(":")[0] for k in scores)  # the unpruned and pruned models count their items once
            values = [v for k, v in scores.items() if arm not in ("original", "none") or k.split(":")[0] == first]
            lo, hi = wilson_ci(int(sum(v >= 1 for v in values)), len(values))
            cells.append(f"{points(100 * np.mean(values))} ({points(100 * lo)}–{points(100 * hi)}, n={len(values)})")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    pairs = [(a, b) for a, b in COMPARE if a in arms and b in arms]
    changes = change_markdown(pairs, tasks, tasks, lambda t, a, b: paired(items[t][b], items[t][a]), "comparison")
    return "\n".join(lines) + "\n\n" + changes


def time_table(runs_dir: Path, methods: list[str], seeds: list[int]) -> str:
    """Each stage's wall time, mean over the seeds that ran it (one CPU thread each)."""
    stages = SEED_FREE[1:] + PER_SEED[1:] + ["recover_full"]
    lines = ["| pruning | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]
    for method in methods:
        cells = []
        for stage in stages:
            times = [m["wall_time_s"] for s in seeds if (m := finished(runs_dir / f"{method}-seed{s}", stage))]
            cells.append(f"{np.mean(times):.0f} s" if times else "–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["wanda", "magnitude"], choices=list(METHODS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--full-seeds", type=int, nargs="*", default=[0], help="seeds that run the full-pool arm")
    ap.add_argument("--eval-seeds", type=int, nargs="*", default=[], help="seeds that run the generation eval stage")
    ap.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "paser_real")
    ap.add_argument("--no-run", action="store_true", help="only measure and tabulate the runs that finished")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from posttrain import packaged

    model = str(packaged.local_folder("builtin:smollm2-135m-instruct"))  # the unpruned model's converted folder
    for method in args.methods:
        first = args.runs_dir / f"{method}-seed{args.seeds[0]}"
        for seed in ([] if args.no_run else args.seeds):
            run = args.runs_dir / f"{method}-seed{seed}"
            if run != first:
                for stage in SEED_FREE:
                    if not (run / stage).exists():
                        shutil.copytree(first / stage, run / stage)
            stages = ((SEED_FREE if run == first else []) + PER_SEED + (["recover_full"] if seed in args.full_seeds else [])
                      + (["eval"] if seed in args.eval_seeds else []))
            run_stages(run, seed, method, stages)
            collect(args.runs_dir, method, [seed], model)
    for method in args.methods:
        arms = collect(args.runs_dir, method, args.seeds, model)
        print(f"\n## {method}\n\n{ppl_table(arms, args.seeds)}\n\n{compare_table(arms)}\n")
        print(generation_tables(args.runs_dir, method, args.seeds), "\n")
    print(selection_table(args.runs_dir, args.methods, args.seeds), "\n")
    print(time_table(args.runs_dir, args.methods, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
