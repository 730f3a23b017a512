"""The README's demo table, from a finished run of recipes/tiny.yaml: its numbers are never typed by hand.

    python bench/readme_numbers.py runs/tiny                   # print the table row and the run's facts
    python bench/readme_numbers.py runs/tiny --write README.md  # put the table into the README
    python bench/readme_numbers.py runs/tiny --check README.md  # exit 1 if a score is off by > TOLERANCE points

TOLERANCE: the same recipe on the same lock repeats bit for bit on one machine; on another CPU, float
rounding can move a few of the 400 held-out answers. 3 points is below the smallest 95% CI half-width in
the table (about 3.6 points at 80% of n=400), so a real change of the demo still fails the check.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import yaml

TOLERANCE = 3.0  # percentage points, per model
MODELS = ["base", "sft", "dpo", "rlvr"]
HEADER = "| held-out exact match (n={n}, 95% CI) | base | SFT | DPO | RLVR |"
# The table in the README: its header line, the separator and one row.
TABLE_RE = re.compile(r"^\| held-out exact match \(n=\d+, 95% CI\) \|.*\n\|[-| ]+\|\n\|.*\|$", re.M)
CELL_RE = re.compile(r"(\d+\.\d) \((\d+\.\d)–(\d+\.\d)\)")


def run_numbers(run_dir: Path) -> dict:
    """Scores (in %), CIs, n, seed, total wall time and library versions of a finished tiny run."""
    results = json.loads((run_dir / "eval" / "results" / "results.json").read_text())
    tasks = {label: results["models"][label]["tasks"]["tinyworld"] for label in MODELS}
    manifests = [json.loads(p.read_text()) for p in run_dir.glob("*/manifest.json")]
    config = yaml.safe_load((run_dir / "data" / "config.resolved.yaml").read_text())
    versions = json.loads((run_dir / "eval" / "manifest.json").read_text()).get("versions", {})
    return {"scores": {m: 100 * t["score"] for m, t in tasks.items()},
            "ci": {m: [100 * x for x in t["ci"]] for m, t in tasks.items()},
            "n": tasks["base"]["n"], "seed": config["seed"],
            "minutes": sum(m.get("wall_time_s") or 0 for m in manifests) / 60,
            "versions": {k: versions.get(k) for k in ("torch", "transformers", "trl")}}


def table(numbers: dict) -> str:
    cells = [f"{numbers['scores'][m]:.1f} ({numbers['ci'][m][0]:.1f}–{numbers['ci'][m][1]:.1f})" for m in MODELS]
    return "\n".join([HEADER.format(n=numbers["n"]), "|---|---|---|---|---|",
                      f"| `recipes/tiny.yaml`, seed {numbers['seed']} | " + " | ".join(cells) + " |"])


def readme_scores(text: str) -> dict[str, float]:
    """The four scores in the README's table, by model."""
    found = TABLE_RE.search(text)
    if found is None:
        raise SystemExit("README: no demo table (a line starting '| held-out exact match (n=')")
    row = found.group().splitlines()[-1]
    return dict(zip(MODELS, (float(m.group(1)) for m in CELL_RE.finditer(row))))


def differences(readme: dict[str, float], numbers: dict) -> list[str]:
    return [f"{m}: README {readme.get(m)} vs run {numbers['scores'][m]:.1f}" for m in MODELS
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
