"""Which stage-to-stage changes are real: the change table of the report, per skill and for the average.

Columns are consecutive pairs of the evaluated models in the eval stage's order (base → SFT, SFT → DPO, ...),
rows the skills (one eval task each, e.g. the tiny world's four) and their average; each cell the change in
points on the same held-out items, with its p-value and how many items were fixed and broken. The scores
themselves, with their CIs, are the report's results table (eval/report.py; its average's CI is `bootstrap`
below); this table adds what that one cannot: the pairing. Tests: an exact McNemar test per skill (a two-sided
binomial test on the items one model gets right and the other wrong; a paired z-test when scores are not
0/1), and a paired z-test for the average (its variance summed over the skills' independent items). Neither
has a resampling floor: a 2,000-resample bootstrap cannot give p below 2/2001, and Holm multiplies that floor
by the family size until a real change looks like chance. p-values are Holm-adjusted over the whole table, so
"real" means the change survives the number of comparisons made; a real change is marked as a gain (▲) or
a loss (▼), never as "best".
"""
from pathlib import Path

import numpy as np

from posttrain.data import read_rows
from posttrain.eval.metrics import BOOTSTRAP_RESAMPLES, points
from posttrain.eval.render import Block, Cell, Heading, Table

ALPHA = 0.05


def per_item(results: dict, folder: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{task label: {model label: {item id: score}}} from the samples files the eval stage saved."""
    items: dict[str, dict[str, dict[str, float]]] = {}
    for label, model in results["models"].items():
        for task, entry in model["tasks"].items():
            if entry.get("samples") and (folder / entry["samples"]).exists():
                items.setdefault(task, {})[label] = {str(r["id"]): float(r["score"]) for r in read_rows(folder / entry["samples"])}
    return items


def paired(a: dict[str, float], b: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    ids = sorted(set(a) & set(b))
    return np.array([a[i] for i in ids]), np.array([b[i] for i in ids])


def mcnemar_p(before: np.ndarray, after: np.ndarray) -> float:
    """Exact McNemar: under no change, each discordant item is equally likely to go either way."""
    from scipy.stats import binomtest

    fixed, broken = int(np.sum((before < 1) & (after >= 1))), int(np.sum((before >= 1) & (after < 1)))
    return 1.0 if fixed + broken == 0 else float(binomtest(fixed, fixed + broken, 0.5).pvalue)


def bootstrap(columns: list[list[np.ndarray]], seed: int = 0) -> np.ndarray:
    """Resampled macro means: columns[c][s] holds column c's scores on skill s's items (the same items, in
    the same order, in every column); each resample draws each skill's items once, shared by all columns.
    Returns an array [resample, column]."""
    rng = np.random.default_rng(seed)
    means = np.zeros((BOOTSTRAP_RESAMPLES, len(columns)))
    for s in range(len(columns[0])):
        n = len(columns[0][s])
        draws = rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
        for c, column in enumerate(columns):
            means[:, c] += column[s][draws].mean(axis=1) / len(columns[0])
    return means


def paired_z_p(diffs: list[np.ndarray]) -> float:
    """Two-sided p of a paired difference of macro means: diffs[s] holds skill s's per-item differences
    (after - before); the mean over skills of their means is normal with variance sum_s var_s / n_s / S^2
    (items are independent within and across skills). Exact enough at the eval's n, and with no floor."""
    from scipy.stats import norm

    mean = float(np.mean([d.mean() for d in diffs]))
    variance = sum(d.var(ddof=1) / len(d) for d in diffs if len(d) > 1) / len(diffs) ** 2
    if variance == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * norm.sf(abs(mean) / np.sqrt(variance)))


def p_text(p: float) -> str:
    """p for a table: below 0.001 the digits say nothing a reader can use."""
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    order = sorted(range(len(pvalues)), key=pvalues.__getitem__)
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def stage_changes(results: dict, folder: Path) -> list[Block]:
    """The change table, or nothing when the results hold fewer than two skills or two models with items."""
    items = per_item(results, folder)
    columns = list(results["models"])
    tasks = [t for t in items if all(c in items[t] for c in columns)]
    skill = {t: results["models"][columns[0]]["tasks"][t].get("skill", t) for t in tasks}
    if len(tasks) < 2 or len(columns) < 2:
        return []
    aligned = {t: [paired(items[t][columns[0]], items[t][c])[1] for c in columns] for t in tasks}
    changes, pvalues = [], []
    for t in tasks:
        row = []
        for c in range(1, len(columns)):
            before, after = paired(items[t][columns[c - 1]], items[t][columns[c]])
            binary = set(np.unique(np.concatenate([before, after]))) <= {0.0, 1.0}
            p = mcnemar_p(before, after) if binary else paired_z_p([after - before])
            row.append((100 * (after.mean() - before.mean()), p,
                        f"{int(np.sum((before < 1) & (after >= 1)))} fixed, {int(np.sum((before >= 1) & (after < 1)))} broken"))
            pvalues.append(p)
        changes.append((Cell(skill[t], t), row))  # the task label ties the row to the results table's
    average = [float(np.mean([aligned[t][c].mean() for t in tasks])) for c in range(len(columns))]
    avg_row = []
    for c in range(1, len(columns)):
        p = paired_z_p([aligned[t][c] - aligned[t][c - 1] for t in tasks])
        avg_row.append((100 * (average[c] - average[c - 1]), p, "paired z-test"))
        pvalues.append(p)
    changes.append((Cell("Average"), avg_row))
    return [Heading("Changes between stages"), _change_table(columns, changes, holm(pvalues))]


def _change_table(columns: list[str], changes: list, adjusted: list[float]) -> Table:
    rows, k = [], 0
    for label, row in changes:
        cells = [label]
        for delta, _, detail in row:
            real = adjusted[k] < ALPHA
            change = ("gain" if delta > 0 else "loss") if real else ""
            cells.append(Cell(points(delta, signed=True) + (f" (real {change})" if real else ""), f"{p_text(adjusted[k])}, {detail}",
                              change=change))
            k += 1
        rows.append(cells)
    headers = ["Skill"] + [f"{a} → {b}" for a, b in zip(columns, columns[1:])]
    return Table(headers, rows, f"Change in points on the same held-out items; p Holm-adjusted over the {len(adjusted)} "
                 f"tests (exact McNemar per skill, paired z-test for the average); real: p < {ALPHA}, "
                 f"▲ a real gain, ▼ a real loss",
                 numeric=set(range(1, len(headers))), rule_before={len(rows) - 1})


def skills_section(results_inputs: list[tuple[str, Path]]) -> list[Block]:
    """The change tables of every results input (an eval stage's results folder) that has them."""
    import json

    blocks: list[Block] = []
    for _, folder in results_inputs:
        path = folder / "results.json"
        if path.exists():
            blocks += stage_changes(json.loads(path.read_text()), folder)
    return blocks


def change_markdown(pairs: list[tuple[str, str]], tasks: list[str], headers: list[str], pair_of, first: str) -> str:
    """The markdown table of `a − b` per task (exact McNemar over paired 0/1 items, with fixed/broken counts) and on
    the average over tasks (paired z-test), Holm-adjusted over the whole table; bold where p < 0.05. pair_of(task,
    a, b) gives (b's scores, a's scores) on the same items; headers name the tasks' columns."""
    rows, pvalues = [], []
    for a, b in pairs:
        cells, diffs = [], []
        for t in tasks:
            before, after = pair_of(t, a, b)
            fixed, broken = int(np.sum((before < 1) & (after >= 1))), int(np.sum((before >= 1) & (after < 1)))
            cells.append((100 * (after.mean() - before.mean()), f"{fixed} fixed / {broken} broken"))
            pvalues.append(mcnemar_p(before, after))
            diffs.append(after - before)
        cells.append((100 * float(np.mean([d.mean() for d in diffs])), ""))
        pvalues.append(paired_z_p(diffs))
        rows.append((f"{a} − {b}", cells))
    adjusted = iter(holm(pvalues))
    lines = [f"| {first} | " + " | ".join(headers) + " | average |", "|---|" + "---|" * (len(tasks) + 1)]
    for name, cells in rows:
        out = []
        for delta, detail in cells:
            p = next(adjusted)
            mark = "**" if p < 0.05 else ""
            out.append(f"{mark}{points(delta, signed=True)}{mark} ({p_text(p)}{', ' + detail if detail else ''})")
        lines.append(f"| {name} | " + " | ".join(out) + " |")
    return "\n".join(lines)
