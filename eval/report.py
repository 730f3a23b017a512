"""The Tülu-style report of a run folder: report.md and a self-contained report.html.

Sections, in order: the main table, the report's one table of scores (benchmarks grouped by skill x
evaluated models, each cell the score with n and 95% CI, the best per row marked, an average row with its
bootstrap CI, optionally a reference column with deltas), the evaluation settings, the change table
(eval/skills.py: each stage against the one before on the same items, which changes are real), links to
the per-example outputs and the items each stage fixed and broke (eval/report_items.py), the
hyperparameters and training curves per stage (eval/report_training.py), the data section (eval/report_data.py: selection and pairs
accounting, dedup, decontamination) and provenance (recipe hash, fingerprints, versions, hardware, wall
time). A section is a function returning blocks (eval/render.py); build_report lists them. Everything
is read from the report's inputs (eval/report_inputs.py: the results and selection summaries it was
given, and the manifests, configs and metrics logs of the stages upstream of them); nothing is recomputed
but what needs the per-example outputs (the average's CI, the paired tests, the fixed and broken items).
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from posttrain.data import atomic_open, read_rows
from posttrain.eval.metrics import points
from posttrain.eval.render import Block, Cell, Heading, Para, Table, to_html, to_markdown
from posttrain.eval.report_data import data_section
from posttrain.eval.report_items import items_section
from posttrain.eval.report_inputs import ReportInputs, inputs_of_run
from posttrain.eval.report_training import curves_section, hyperparameter_section
from posttrain.eval.skills import skills_section

SKILL_ORDER = ["math", "instruction following", "code", "knowledge", "reasoning", "tiny world", "lm-eval"]


@dataclass
class Stage:
    name: str
    manifest: dict
    dir: Path

    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete"


@dataclass
class Run:
    dir: Path
    info: dict
    stages: list[Stage]


@dataclass
class Scores:
    """The main table's data: columns (model labels, in order) and per task label its entry per column."""
    columns: list[str] = field(default_factory=list)
    tasks: dict[str, dict[str, dict]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    samples: dict[str, Path] = field(default_factory=dict)  # column -> its per-example outputs' folder


def build_report(run_dir: Path, out_dir: Path, reference: str | None = None, inputs: ReportInputs | None = None) -> Path:
    """Write out_dir/report.md, out_dir/report.html (and out_dir/plots/*.png); return the HTML path.
    inputs: what the report reads (default: the run's, as `posttrain report` rebuilds it)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if inputs is None:
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{run_dir}: no such run folder")
        inputs = inputs_of_run(run_dir)
    run = load_run(run_dir, inputs)
    scores = collect_scores(inputs)
    ref = load_reference(reference) if reference else None
    blocks: list[Block] = [Para(_summary_line(run))]
    blocks += results_section(scores, ref)
    blocks += skills_section(inputs.results)  # by skill, with which stage-to-stage changes are real
    blocks += samples_section(scores, out_dir)
    blocks += items_section(inputs.results)  # per benchmark, the items each stage fixed and broke
    blocks += hyperparameter_section(run.stages)
    blocks += curves_section(run.stages, out_dir / "plots")
    blocks += data_section(inputs.summaries, run.stages, out_dir / "plots", evaluated=list(scores.tasks))
    blocks += provenance_section(run)
    title = f"Report: {run.info.get('recipe', run_dir.name)}"
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / "report.html"
    for path, text in ((out_dir / "report.md", to_markdown(title, blocks, out_dir)), (html_path, to_html(title, blocks))):
        with atomic_open(path) as f:
            f.write(text)
    return html_path


# ---------- reading the run ----------
def load_run(run_dir: Path, inputs: ReportInputs) -> Run:
    """run.json and the manifests of the stages the inputs name."""
    if not inputs.stages and not inputs.results:
        raise FileNotFoundError(f"{run_dir}: no stage manifests (*/manifest.json); is this a posttrain run folder?")
    info = _read_json(run_dir / "run.json") or {}
    stages = [Stage(n, m, run_dir / n) for n in inputs.stages if (m := _read_json(run_dir / n / "manifest.json"))]
    return Run(run_dir, info, stages)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def collect_scores(inputs: ReportInputs) -> Scores:
    """Every results input's results.json, in the order given. A model label used by two of them becomes
    `name/label` so neither hides the other."""
    scores = Scores(notes=list(inputs.notes))
    loaded = []
    for name, folder in inputs.results:
        results = _read_json(folder / "results.json")
        if results is None:
            raise FileNotFoundError(f"{folder / 'results.json'}: missing, though '{name}' is complete; rerun it with --force")
        loaded.append((name, results))
    labels = [label for _, results in loaded for label in results["models"]]
    for (stage_name, results), (_, folder) in zip(loaded, inputs.results):
        for label, model in results["models"].items():
            column = f"{stage_name}/{label}" if labels.count(label) > 1 else label
            scores.columns.append(column)
            scores.samples[column] = folder / "samples" / label
            for task, entry in model["tasks"].items():
                scores.tasks.setdefault(task, {})[column] = entry
    return scores


def load_reference(path: str) -> dict:
    """A user file (YAML or JSON) of published numbers in percent: {name: ..., scores: {task label: 87.6}}.
    Sub-metric rows are keyed `task · metric` (e.g. `ifeval · prompt_loose`)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: reference file not found") from None
    if not isinstance(data, dict) or not isinstance(data.get("scores"), dict):
        raise ValueError(f"{path}: expected a mapping with `name` and `scores: {{task: percent}}`")
    bad = [k for k, v in data["scores"].items() if not isinstance(v, (int, float))]
    if bad:
        raise ValueError(f"{path}: scores must be numbers (percent); not numbers: {', '.join(map(str, bad))}")
    return {"name": str(data.get("name", Path(path).stem)), "scores": data["scores"]}


# ---------- the main table ----------
def results_section(scores: Scores, ref: dict | None) -> list[Block]:
    blocks: list[Block] = [Heading("Results")]
    if not scores.columns:
        return blocks + [Para("No complete eval stage in this run.")] + [Para(n) for n in scores.notes]
    blocks.append(main_table(scores, ref))
    blocks += [Para(n) for n in scores.notes]
    blocks.append(settings_table(scores))
    return blocks


def table_rows(scores: Scores) -> list[tuple[str, str, str, dict[str, dict]]]:
    """(skill, row label, metric, {column: {score, n, ci}}) in display order: skills in SKILL_ORDER,
    tasks in suite order, each task's headline row followed by its sub-metric rows."""
    def skill_of(task):
        return next(iter(scores.tasks[task].values())).get("skill", "other")

    order = sorted(scores.tasks, key=lambda t: (SKILL_ORDER.index(skill_of(t)) if skill_of(t) in SKILL_ORDER
                                                else len(SKILL_ORDER), skill_of(t)))
    rows = []
    for task in order:
        by_column = scores.tasks[task]
        first = next(iter(by_column.values()))
        rows.append((skill_of(task), task, first.get("metric", ""), by_column))
        for metric in first.get("metrics", {}):
            rows.append((skill_of(task), f"{task} · {metric}", metric,
                         {c: e["metrics"][metric] for c, e in by_column.items() if metric in e.get("metrics", {})}))
    return rows


def main_table(scores: Scores, ref: dict | None) -> Table:
    headers = ["Benchmark", "metric"] + scores.columns
    if ref:
        headers += [f"{ref['name']} (ref.)", f"Δ {scores.columns[-1]}"]
    rows, groups, skill = [], set(), None
    for row_skill, label, metric, by_column in table_rows(scores):
        if row_skill != skill:
            skill = row_skill
            groups.add(len(rows))
            rows.append([skill.capitalize()])
        cells = [Cell(label), Cell(metric)] + score_cells(by_column, scores.columns)
        if ref:
            cells += _reference_cells(ref["scores"].get(label), by_column.get(scores.columns[-1]))
        rows.append(cells)
    caption = "Scores in % (95% CI and n below each). ▲ / bold: best in the row."
    rule = len(rows)
    if len(scores.tasks) > 1:  # the average of one benchmark would only repeat it
        rows.append(average_row(scores, ref))
        caption += (" Average: mean of the benchmarks' headline scores, over models that have them all; its CI a "
                    "bootstrap that resamples each benchmark's items (– where a benchmark's per-item outputs are missing).")
    return Table(headers, rows, caption, numeric=set(range(2, len(headers))), group_rows=groups, rule_before={rule})


def score_cells(by_column: dict[str, dict], columns: list[str]) -> list[Cell]:
    best = _best([by_column[c]["score"] for c in columns if c in by_column])
    cells = []
    for c in columns:
        entry = by_column.get(c)
        if entry is None:
            cells.append(Cell("–"))
            continue
        lo, hi = entry["ci"]
        cells.append(Cell(pct(entry["score"]), f"{pct(lo)}–{pct(hi)}, n={entry['n']}", best=entry["score"] == best))
    return cells


def average_row(scores: Scores, ref: dict | None) -> list[Cell]:
    headline = list(scores.tasks.values())
    averages = {c: sum(t[c]["score"] for t in headline) / len(headline)
                for c in scores.columns if all(c in t for t in headline)}
    best = _best(list(averages.values()))
    cells = [Cell("Average"), Cell(f"mean of {len(headline)} benchmarks")]
    for c in scores.columns:
        ci = average_ci(scores, c) if c in averages else None
        cells.append(Cell(pct(averages[c]), f"{pct(ci[0])}–{pct(ci[1])}" if ci else "CI –", best=averages[c] == best)
                     if c in averages else Cell("–"))
    if ref:
        known = [ref["scores"].get(t) for t in scores.tasks]
        ref_avg = sum(known) / len(known) if all(v is not None for v in known) else None
        last = averages.get(scores.columns[-1])
        cells += [Cell(points(ref_avg) if ref_avg is not None else "–"),
                  Cell(points(100 * last - ref_avg, signed=True) if ref_avg is not None and last is not None else "–")]
    return cells


def average_ci(scores: Scores, column: str) -> tuple[float, float] | None:
    """The 95% CI of a column's average over benchmarks: a percentile bootstrap that resamples each benchmark's
    items (its per-item outputs, whose mean is the headline score); None when a benchmark has none saved."""
    import numpy as np

    from posttrain.eval.metrics import CONFIDENCE
    from posttrain.eval.skills import bootstrap

    groups = []
    for task in scores.tasks:
        path = scores.samples[column] / f"{task}.jsonl"
        if not path.exists():
            return None
        groups.append(np.array([float(r["score"]) for r in read_rows(path)]))
    means = bootstrap([groups])[:, 0]
    lo, hi = np.quantile(means, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(lo), float(hi)


def _best(values: list[float]) -> float | None:
    """The value to mark as best, or None when there is nothing to choose between (one value, or all tied)."""
    return max(values) if len(set(values)) > 1 else None


def _reference_cells(ref_score: float | None, entry: dict | None) -> list[Cell]:
    if ref_score is None:
        return [Cell("–"), Cell("–")]
    delta = points(100 * entry["score"] - ref_score, signed=True) if entry else "–"
    return [Cell(points(ref_score)), Cell(delta)]


def pct(x: float) -> str:
    return points(100 * x)


def settings_table(scores: Scores) -> Table:
    rows = []
    for task, by_column in scores.tasks.items():
        entry = next(iter(by_column.values()))
        o = entry.get("options", {})
        sampling = "greedy" if not o.get("temperature") else f"T={o['temperature']}, top-p={o.get('top_p', 1.0)}"
        rows.append([task, entry.get("description", entry.get("task", "")), str(o.get("shots", "–")),
                     "chat template" if o.get("chat") else "plain text", str(o.get("max_new_tokens", "–")),
                     f"{sampling}, {o.get('samples', 1)} per prompt", str(o.get("limit") or "all")])
    return Table(["Benchmark", "what", "shots", "prompt", "max new tokens", "decoding", "limit"], rows, numeric={2, 4, 6},
                 caption="Evaluation settings")


def samples_section(scores: Scores, out_dir: Path) -> list[Block]:
    """Links to each model's per-example outputs per benchmark (the eval stage's samples/<model>/<task>.jsonl),
    relative to the report file, so they open from report.md and report.html alike."""
    if not scores.columns:
        return []
    rows = []
    for task, by_column in scores.tasks.items():
        cells = [Cell(task)]
        for column in scores.columns:
            path = scores.samples[column] / f"{task}.jsonl"
            found = column in by_column and path.exists()
            cells.append(Cell(f"{by_column[column]['n']} items", href=Path(os.path.relpath(path, out_dir)).as_posix())
                         if found else Cell("–"))
        rows.append(cells)
    return [Table(["Benchmark"] + scores.columns, rows, "Per-example outputs (prompt, completions, scores) per model",
                  numeric=set(range(1, len(scores.columns) + 1)))]


# ---------- provenance ----------
def provenance_section(run: Run) -> list[Block]:
    rows = []
    for s in run.stages:
        m = s.manifest
        hw = m.get("hardware", {})
        where = ", ".join(hw.get("gpus", [])) or (f"{hw['cpus']} CPUs" if hw.get("cpus") else "–")
        wall = m.get("wall_time_s")
        rows.append([s.name, m.get("kind", "–"), m.get("status", "–"), m.get("fingerprint", "–"),
                     ", ".join(m.get("upstream", {})) or "–", where,
                     f"{wall:.1f} s" if isinstance(wall, (int, float)) else "–", m.get("ended") or "–"])
    blocks: list[Block] = [Heading("Provenance"),
                           Para(f"Recipe '{run.info.get('recipe', '?')}', recipe hash {run.info.get('recipe_hash', '?')}; "
                                f"run folder {run.dir}."), *invocation_paras(run),
                           Table(["stage", "kind", "status", "fingerprint", "upstream", "hardware", "wall time", "ended"],
                                 rows, "Stages in run order", numeric={6})]
    tracked = [f"{s.name}: {s.manifest['metrics']['tracking']}" for s in run.stages
               if "tracking" in s.manifest.get("metrics", {})]
    if tracked:  # where each stage's experiment tracker run is (train.report_to)
        blocks.append(Para("Tracked runs: " + "; ".join(tracked) + "."))
    blocks.append(versions_table(run))
    return blocks


def invocation_paras(run: Run) -> list[Para]:
    """How the last `posttrain run` was called, with which overrides and which posttrain; and any stage whose
    manifest was written by another command (a cached stage from an earlier run)."""
    from posttrain.provenance import describe

    info = run.info
    if "command_line" not in info:  # a run folder from before posttrain recorded it
        return []
    overrides = info.get("overrides") or []
    paras = [Para(f"Last run: `{info['command_line'] or '(called from Python)'}`; overrides: "
                  f"{', '.join(f'`{o}`' for o in overrides) if overrides else 'none'}; "
                  f"{describe(info.get('posttrain') or {})}.")]
    last = (info["command_line"], info.get("posttrain"))
    earlier = [f"{s.name} by `{s.manifest['command_line']}` ({describe(s.manifest.get('posttrain') or {})})"
               for s in run.stages if "command_line" in s.manifest
               and (s.manifest["command_line"], s.manifest.get("posttrain")) != last]
    if earlier:
        paras.append(Para("Stages made by an earlier command: " + "; ".join(earlier) + "."))
    return paras


def versions_table(run: Run) -> Table:
    """Package versions; a stage that ran with a different version is named next to it, and so is the set of
    the last `posttrain run` (run.json), which cached stages may predate."""
    by_package: dict[str, dict[str, list[str]]] = {}
    for s in run.stages:
        for package, version in s.manifest.get("versions", {}).items():
            by_package.setdefault(package, {}).setdefault(version, []).append(s.name)
    for package, version in run.info.get("packages", {}).items():
        by_package.setdefault(package, {}).setdefault(version, []).append("the last run")
    rows = []
    for package, versions in by_package.items():
        ranked = sorted(versions.items(), key=lambda kv: -len(kv[1]))
        text = ranked[0][0] + "".join(f"; {v} in {', '.join(names)}" for v, names in ranked[1:])
        rows.append([package, text])
    host = next((s.manifest["hardware"] for s in run.stages if s.manifest.get("hardware")), {})
    return Table(["package", "version"], rows, "Package versions" + (f" (host {host.get('host', '?')}, "
                                                                      f"{host.get('platform', '?')})" if host else ""))


def _summary_line(run: Run) -> str:
    done = sum(s.complete for s in run.stages)
    total_wall = sum(s.manifest.get("wall_time_s") or 0 for s in run.stages)
    # the stages upstream of the report, not the run's others: only what it reads may change what it says
    return (f"{done} of the {len(run.stages)} stages upstream of this report complete "
            f"({' → '.join(s.name for s in run.stages)}); total stage wall time {total_wall / 60:.1f} min.")
