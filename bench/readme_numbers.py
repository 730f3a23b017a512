"""The README's demo table, from a finished run of recipes/tiny.yaml: its numbers are never typed by hand.

    python bench/readme_numbers.py runs/tiny                   # print the table row and the run's facts
    python bench/readme_numbers.py runs/tiny --write README.md  # put the table into the README
    python bench/readme_numbers.py runs/tiny --check README.md  # exit 1 if a score is off by > TOLERANCE points

The headline row is the mean over the tiny world's skills (one eval task each), its CI a bootstrap over
each skill's held-out items (posttrain.eval.skills); a row per skill follows it.

TOLERANCE: the same recipe on the same lock repeats bit for bit on one machine; on another CPU, float
rounding can move a few of the held-out answers. 3 points is below the 95% CI half-width of the headline
(about 3 points for the mean of four skills at n=200 each), so a real change of the demo still fails the check.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import yaml

from posttrain.eval.metrics import points  # the report's rounding: the README and the report print alike

TOLERANCE = 3.0  # percentage points, per model
MODELS = ["base", "sft", "dpo", "rlvr"]
HEADER = "| held-out score{what} (n={n}, 95% CI) | base | SFT | DPO | RLVR |"
# The table in the README: its header line, the separator, the headline row and any rows per skill.
TABLE_RE = re.compile(r"^\| held-out [^|\n]*\(n=\d+[^|\n]*95% CI\) \|.*\n\|[-| ]+\|\n\|.*\|(?:\n\| · .*\|)*$", re.M)
HEADLINE_RE = re.compile(r"^\| `recipes/tiny.yaml`.*\|$", re.M)
CELL_RE = re.compile(r"(\d+\.\d) \((\d+\.\d)–(\d+\.\d)\)")


def run_numbers(run_dir: Path) -> dict:
    """Scores (in %: the mean over skills), CIs, per-skill scores, n per skill, seed, total wall time and
    library versions of a finished tiny run."""
    folder = run_dir / "eval" / "results"
    results = json.loads((folder / "results.json").read_text())
    tasks = {m: results["models"][m]["tasks"] for m in MODELS}
    labels = list(tasks["base"])
    skills = {tasks["base"][t].get("skill", t): {m: 100 * tasks[m][t]["score"] for m in MODELS} for t in labels}
    manifests = [json.loads(p.read_text()) for p in run_dir.glob("*/manifest.json")]
    config = yaml.safe_load((run_dir / "data" / "config.resolved.yaml").read_text())
    versions = json.loads((run_dir / "eval" / "manifest.json").read_text()).get("versions", {})
    return {"scores": {m: sum(s[m] for s in skills.values()) / len(skills) for m in MODELS},
            "ci": _mean_ci(results, folder, tasks, labels), "skills": skills if len(skills) > 1 else {},
            "n": tasks["base"][labels[0]]["n"], "seed": config["seed"],
            "minutes": sum(m.get("wall_time_s") or 0 for m in manifests) / 60,
            "versions": {k: versions.get(k) for k in ("torch", "transformers", "trl")}}


def _mean_ci(results: dict, folder: Path, tasks: dict, labels: list[str]) -> dict[str, list[float]]:
    """The CI of the mean over skills (a bootstrap over each skill's items); of the one task's score if one."""
    if len(labels) == 1:
        return {m: [100 * x for x in tasks[m][labels[0]]["ci"]] for m in MODELS}
    import numpy as np

    from posttrain.eval.skills import bootstrap, paired, per_item

    items = per_item(results, folder)
    means = bootstrap([[paired(items[t]["base"], items[t][m])[1] for t in labels] for m in MODELS])
    return {m: [100 * float(q) for q in np.quantile(means[:, i], [0.025, 0.975])] for i, m in enumerate(MODELS)}


def table(numbers: dict) -> str:
    cells = [f"{points(numbers['scores'][m])} ({points(numbers['ci'][m][0])}–{points(numbers['ci'][m][1])})" for m in MODELS]
    skills = numbers.get("skills") or {}
    what = f", mean of {len(skills)} skills" if skills else ""
    return "\n".join([HEADER.format(what=what, n=f"{numbers['n']} per skill" if skills else numbers["n"]),
                      "|---|---|---|---|---|",
                      f"| `recipes/tiny.yaml`, seed {numbers['seed']} | " + " | ".join(cells) + " |"] +
                     [f"| · {skill} | " + " | ".join(points(s[m]) for m in MODELS) + " |" for skill, s in skills.items()])


def readme_scores(text: str) -> dict[str, float]:
    """The four scores in the README's table, by model."""
    found = TABLE_RE.search(text)
    if found is None:
        raise SystemExit("README: no demo table (a line starting '| held-out ' with '(n=... 95% CI)')")
    row = HEADLINE_RE.search(found.group()).group()
    return dict(zip(MODELS, (float(m.group(1)) for m in CELL_RE.finditer(row))))


def differences(readme: dict[str, float], numbers: dict) -> list[str]:
    return [f"{m}: README {readme.get(m)} vs run {points(numbers['scores'][m])}" for m in MODELS
            if readme.get(m) is None or abs(readme[m] - numbers["scores"][m]) > TOLERANCE]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="README")
    group.add_argument("--check", type=Path, metavar="README")
    args = ap.parse_args(argv)
    numbers = run_numbers(args.run_dir)
    print(table(numbers))
    print(f"\nseed {numbers['seed']}, {numbers['minutes']:.1f} min of stage time, " +
          ", ".join(f"{k} {v}" for k, v in numbers["versions"].items()))
    if args.write:
        text = args.write.read_text()
        readme_scores(text)  # fails clearly if the table is missing
        args.write.write_text(TABLE_RE.sub(lambda _: table(numbers), text, count=1))
        print(f"wrote the table into {args.write}")
    if args.check:
        off = differences(readme_scores(args.check.read_text()), numbers)
        print(f"{args.check}: " + ("; ".join(off) if off else f"every score within {TOLERANCE} points"))
        return 1 if off else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
