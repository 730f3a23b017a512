"""What a report reads, and nothing else: the results folders and selection summaries it was given, and
the manifests and metrics logs (written by the core) of the stages upstream of them, which the report's
fingerprint covers through theirs.

The report stage passes its declared inputs (`inputs_of_stage`). `posttrain report RUN_DIR` rebuilds a
run's report from the report stage's recorded config, or, in a run without one, from every declared
Results and Summary output of the run (`inputs_of_run`)."""
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from posttrain.stage import Results, Summary, is_ref, parse_ref

READS = {Results: "results", Summary: "summaries"}  # the output types a report reads


@dataclass
class ReportInputs:
    results: list[tuple[str, Path]] = field(default_factory=list)    # (name, results folder)
    summaries: list[tuple[str, Path]] = field(default_factory=list)  # (stage name, selection summary.json)
    stages: list[str] = field(default_factory=list)  # stages shown in curves and provenance, in run order
    notes: list[str] = field(default_factory=list)   # inputs that could not be read, for the reader


def inputs_of_stage(cfg, ctx) -> ReportInputs:
    """The report stage's declared inputs, with the stages upstream of it."""
    def named(value: str) -> tuple[str, Path]:
        return (parse_ref(value)[0] if is_ref(value) else Path(value).name), Path(ctx.path(value))
    return ReportInputs([named(v) for v in cfg.results], [named(v) for v in cfg.selection], list(ctx.lineage))


def inputs_of_run(run_dir: Path) -> ReportInputs:
    manifests = _manifests(run_dir)
    report = next((m for m in manifests.values() if m.get("kind") == "report"), None)
    if report is not None:
        return _recorded(run_dir, report, manifests)
    import posttrain.stages  # noqa: F401  (the kinds' declared outputs)
    from posttrain.stage import STAGES

    inputs = ReportInputs(stages=list(manifests))
    for name, m in manifests.items():
        declared = STAGES[m["kind"]].outputs if m.get("kind") in STAGES else {}
        for output, tp in declared.items():
            if tp not in READS:
                continue
            if m.get("status") != "complete":
                inputs.notes.append(f"{m['kind']} stage '{name}' is {m.get('status')}: its {output} is not in the report")
            else:
                getattr(inputs, READS[tp]).append((name, run_dir / m["artifacts"][output]))
    return inputs


def _recorded(run_dir: Path, report: dict, manifests: dict[str, dict]) -> ReportInputs:
    """The inputs a run's report stage was given, from its config.resolved.yaml."""
    config = yaml.safe_load((run_dir / report["stage"] / report.get("config", "config.resolved.yaml")).read_text())

    def resolve(value: str) -> tuple[str, Path]:
        if not is_ref(value):
            return Path(value).name, Path(value)
        stage, output = parse_ref(value)
        return stage, run_dir / manifests[stage]["artifacts"][output]
    upstream = lineage(report["stage"], manifests)
    return ReportInputs([resolve(v) for v in config.get("results", [])],
                        [resolve(v) for v in config.get("selection", [])], upstream)


def lineage(stage: str, manifests: dict[str, dict]) -> list[str]:
    """Every stage upstream of `stage`, following the manifests' recorded upstream, in run order."""
    found, todo = set(), list(manifests.get(stage, {}).get("upstream", {}))
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += list(manifests.get(name, {}).get("upstream", {}))
    return [n for n in manifests if n in found]


def _manifests(run_dir: Path) -> dict[str, dict]:
    """Stage name -> manifest, in run order (run.json's), for the stages that have one."""
    try:
        names = json.loads((run_dir / "run.json").read_text())["stages"]
    except (OSError, ValueError, KeyError):
        names = sorted(p.parent.name for p in run_dir.glob("*/manifest.json"))
    out = {}
    for name in names:
        try:
            out[name] = json.loads((run_dir / name / "manifest.json").read_text())
        except FileNotFoundError:
            continue
        except ValueError as e:
            raise ValueError(f"{run_dir / name / 'manifest.json'}: not valid JSON ({e})") from None
    return out
