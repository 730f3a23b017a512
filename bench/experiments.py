"""The selection experiments of docs/experiments.md over seeds: run recipes/experiments/{grape_ablation,
paser_recovery}.yaml once per seed from that seed's demo run (its base model, and its SFT model as PASER's
"original"), then print the doc's markdown tables, pooled over the seeds.

    python bench/experiments.py grape --seeds 0 1 2 --demo 'runs/tiny-seed{seed}'
    python bench/experiments.py paser --seeds 0 1 2 --demo 'runs/tiny-seed{seed}' vars.eval_limit=100
    python bench/experiments.py paser --seeds 0 1 2 --no-run     # only the tables of the runs that finished

--demo: the demo run folder of each seed (recipes/tiny.yaml, e.g. from bench/demo_seeds.py); a file there is read
as holding that folder's path. Runs go to RUNS_DIR/{experiment}-seed{N}; finished stages are cached.
Scores pool the seeds' held-out items: per skill a Wilson 95% CI over all seeds' items; the average over
skills a bootstrap over each skill's items (posttrain.eval.skills). Paired tests compare two methods on the same
items of the same seed: exact McNemar per skill, a paired z-test for the average, Holm-adjusted.
"""
import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from posttrain.data import read_rows
from posttrain.eval.metrics import CONFIDENCE, wilson_ci
from posttrain.eval.skills import bootstrap, change_markdown, paired, per_item

REPO = Path(__file__).resolve().parents[1]
SKILL_OF = {"arith": "arithmetic", "format": "format", "code": "code"}
EXPERIMENTS = {
    "grape": {"recipe": "grape_ablation", "demo_models": {"base_model": "base"},
              "selections": ["grape", "random_response", "reverse", "ifd"],
              "compare": [("grape", "random_response"), ("grape", "reverse_grape"), ("grape", "ifd"),
                          ("reverse_grape", "random_response")]},
    "paser": {"recipe": "paser_recovery", "demo_models": {"base_model": "base", "original_model": "sft"},
              "selections": ["paser", "paser_no_ccg", "paser_paper", "paser_paper_no_ccg", "random", "ifd"],
              "compare": [("pruned", "original"), ("paser", "random"), ("paser", "ifd"), ("paser_no_ccg", "random"),
                          ("paser", "paser_no_ccg"), ("paser_paper", "random"), ("paser_paper", "paser"),
                          ("paser_paper_no_ccg", "random")]},
}


def demo_folder(template: str, seed: int) -> Path:
    path = Path(template.format(seed=seed))
    return Path(path.read_text().strip()) if path.is_file() else path


def stage_model(run: Path, stage: str) -> Path:
    manifest = json.loads((run / stage / "manifest.json").read_text())
    if manifest["status"] != "complete":
        raise SystemExit(f"{run / stage}: not complete ({manifest['status']})")
    return run / manifest["artifacts"]["model"]


def run_seed(exp: dict, seed: int, demo: Path, out: Path, overrides: list[str]) -> int:
    models = [f"vars.{var}={stage_model(demo, stage)}" for var, stage in exp["demo_models"].items()]
    cmd = [sys.executable, "-m", "posttrain.cli", "run", str(REPO / "recipes" / "experiments" / f"{exp['recipe']}.yaml"),
           f"vars.seed={seed}", *models, *overrides, "--out", str(out)]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


# ---------- scores pooled over seeds ----------

def pooled_items(runs: list[Path]) -> tuple[dict, dict, list[str]]:
    """{task: {model: {seed:item: score}}}, {task: skill name}, model labels in the eval stage's order."""
    items: dict = {}
    skills, labels = {}, []
    for run in runs:
        folder = run / "eval" / "results"
        results = json.loads((folder / "results.json").read_text())
        labels = list(results["models"])
        for task, by_model in per_item(results, folder).items():
            skills[task] = results["models"][labels[0]]["tasks"][task].get("skill", task)
            for model, scores in by_model.items():
                items.setdefault(task, {}).setdefault(model, {}).update({f"{run.name}:{i}": s for i, s in scores.items()})
    return items, skills, labels


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def score_table(items: dict, skills: dict, labels: list[str], per_seed: dict) -> str:
    tasks = list(items)
    lines = ["| skill | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for t in tasks:
        cells = []
        for m in labels:
            v = np.array(list(items[t][m].values()))
            lo, hi = wilson_ci(int(v.sum()), len(v))
            cells.append(f"{pct(v.mean())} ({pct(lo)}–{pct(hi)})")
        lines.append(f"| {skills[t]} (n={len(items[t][labels[0]])}) | " + " | ".join(cells) + " |")
    aligned = [[paired(items[t][labels[0]], items[t][m])[1] for t in tasks] for m in labels]
    means = bootstrap(aligned)
    lo, hi = np.quantile(means, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2], axis=0)
    avg = [np.mean([a.mean() for a in col]) for col in aligned]
    lines.append(f"| **average of {len(tasks)}** | " + " | ".join(
        f"**{pct(a)}** ({pct(l)}–{pct(h)})" for a, l, h in zip(avg, lo, hi)) + " |")
    lines.append("| average, per seed | " + " | ".join(" / ".join(pct(s) for s in per_seed[m]) for m in labels) + " |")
    return "\n".join(lines)


def per_seed_average(runs: list[Path], labels: list[str]) -> dict[str, list[float]]:
    out = {m: [] for m in labels}
    for run in runs:
        results = json.loads((run / "eval" / "results" / "results.json").read_text())
        for m in labels:
            tasks = results["models"][m]["tasks"].values()
            out[m].append(sum(e["score"] for e in tasks) / len(tasks))
    return out


def compare_table(items: dict, skills: dict, pairs: list[tuple[str, str]]) -> str:
    """a − b per skill (exact McNemar over the pooled paired items) and on the average (paired z-test)."""
    tasks = list(items)
    return change_markdown(pairs, tasks, [skills[t] for t in tasks],
                           lambda t, a, b: paired(items[t][b], items[t][a]), "comparison")


# ---------- what each selection picked ----------

def correct(picked: list[dict]) -> list[float]:
    """Each picked response scored by its skill's verifier (the eval's check)."""
    from posttrain.rewards.batch import score_rows
    from posttrain.worlds.tinyworld import SKILLS

    verdicts = score_rows([r["messages"][-1]["content"] for r in picked],
                          [{**r, "verifier": SKILLS[r["skill"]].verifier} for r in picked])
    return [v.score for v in verdicts]


def picked_table(runs: list[Path], selections: list[str]) -> str:
    """Per selection, summed over seeds: rows per skill, the share its skill's verifier accepts, and the
    teachers picked within each skill."""
    lines = ["| selection | rows (arithmetic / format / code) | correct % (arithmetic / format / code) | "
             "teachers picked, per skill (sum over seeds) |", "|---|---|---|---|"]
    for sel in selections:
        picked = [r for run in runs for r in read_rows(run / sel / "data.jsonl")]
        by_skill = Counter(r["skill"] for r in picked)
        right = Counter()
        for r, score in zip(picked, correct(picked)):
            right[r["skill"]] += score
        teachers = {s: Counter(r["source"] for r in picked if r["skill"] == s) for s in SKILL_OF}
        mix = "; ".join(f"{SKILL_OF[s]}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda x: -x[1]))
                        for s, c in teachers.items() if c)
        share = " / ".join(pct(right[s] / by_skill[s]) if by_skill[s] else "–" for s in SKILL_OF)
        lines.append(f"| {sel} | " + " / ".join(str(by_skill[s]) for s in SKILL_OF) + f" | {share} | {mix} |")
    return "\n".join(lines)


def paser_table(runs: list[Path], selections: list[str]) -> str:
    """PASER's clusters grouped by the skill of their rows, per seed: clusters, rows, size-weighted mean JSD,
    PASER's budget, and the rows each selection kept from that skill."""
    head = "| seed | skill | clusters | pool rows | degradation (mean JSD) | PASER budget | " + \
           " | ".join(f"kept: {s}" for s in selections) + " |"
    lines = [head, "|---|---|---|---|---|---|" + "---|" * len(selections)]
    notes = []
    for run in runs:
        skill_of = {r["id"]: r["skill"] for r in read_rows(run / "pool" / "data.jsonl")}
        audit = read_rows(run / "paser" / "audit.jsonl")
        summary = json.loads((run / "paser" / "summary.json").read_text())["paser"]
        cluster_skill = {}
        for c in range(summary["k"]):
            members = Counter(skill_of[r["id"]] for r in audit if r["cluster"] == c)
            cluster_skill[c] = members.most_common(1)[0][0] if members else "?"
            if members and members.most_common(1)[0][1] < sum(members.values()):
                notes.append(f"{run.name} cluster {c} mixes skills {dict(members)}")
        kept = {s: Counter(r["skill"] for r in read_rows(run / s / "data.jsonl")) for s in selections}
        for skill in SKILL_OF:
            cl = [c for c in summary["clusters"] if cluster_skill[c["cluster"]] == skill]
            size = sum(c["size"] for c in cl)
            jsd = sum(c["degradation"] * c["size"] for c in cl) / max(size, 1)
            lines.append(f"| {run.name.rsplit('seed', 1)[-1]} | {SKILL_OF[skill]} | {len(cl)} | {size} | {jsd:.4f} | "
                         f"{sum(c['budget'] for c in cl)} | " + " | ".join(str(kept[s][skill]) for s in selections) + " |")
        notes.append(f"{run.name}: K={summary['k']} ({summary['k_chosen_by']}), CCG rejected {summary['ccg_rejected']}, "
                     f"shortfall {summary['budget_shortfall']}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=list(EXPERIMENTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--demo", default="runs/tiny-seed{seed}", help="each seed's demo run folder (or a file holding it)")
    ap.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "experiments")
    ap.add_argument("--no-run", action="store_true", help="only tabulate the runs that already finished")
    ap.add_argument("overrides", nargs="*", help="recipe overrides for every seed, e.g. vars.eval_limit=100")
    args = ap.parse_args(argv)
    exp = EXPERIMENTS[args.experiment]
    runs = []
    for seed in args.seeds:
        out = args.runs_dir / f"{args.experiment}-seed{seed}"
        if not args.no_run and run_seed(exp, seed, demo_folder(args.demo, seed), out, args.overrides) != 0:
            print(f"seed {seed}: the run failed; see {out}/*/stage.log")
        if (out / "eval" / "results" / "results.json").exists():
            runs.append(out)
    if not runs:
        print("no finished run")
        return 1
    items, skills, labels = pooled_items(runs)
    print(f"\n{len(runs)} seeds: {', '.join(r.name for r in runs)}\n")
    print(score_table(items, skills, labels, per_seed_average(runs, labels)), "\n")
    print(compare_table(items, skills, exp["compare"]), "\n")
    print(picked_table(runs, exp["selections"]), "\n")
    if args.experiment == "paser":
        print(paser_table(runs, exp["selections"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
