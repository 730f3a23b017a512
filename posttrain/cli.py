"""posttrain: run, validate, plan, inspect, status and report. Exit codes: 0 ok, 1 a stage failed,
2 a bad recipe or bad command line, 3 the run folder is locked."""
import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class UsageError(Exception):
    """A bad command line: exit code 2, like a bad recipe."""


def _console(file=None):
    from rich.console import Console

    # soft_wrap: a message is one line, never broken at the console width (a run folder's path stays whole
    # for copying and for grep); tables still fit the width
    return Console(file=file, highlight=False, soft_wrap=True)


def _load(args):
    from posttrain.recipe import load

    recipe = load(args.recipe, args.overrides)
    for warning in recipe.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return recipe


def _run_dir(args, recipe) -> Path:
    return Path(args.out) if args.out else Path("runs") / recipe.name


def cmd_validate(args) -> int:
    recipe = _load(args)
    _console().print(f"[green]ok[/]: {args.recipe} is valid: {len(recipe.stages)} stages: {' -> '.join(recipe.stages)}")
    return 0


def cmd_config(args) -> int:
    """Every stage's resolved config, each value with where it came from: recipe, override or default."""
    from posttrain.config_view import config_sources
    from posttrain.recipe import RecipeError

    recipe = _load(args)
    if args.stage and args.stage not in recipe.stages:
        raise RecipeError([f"{args.recipe}: --stage {args.stage}: no such stage; stages: {', '.join(recipe.stages)}"])
    for name, spec in recipe.stages.items():
        if args.stage in (None, name):
            print(f"{name} ({spec.kind})")
            rows = [(key, json.dumps(value, default=str), source) for key, value, source in config_sources(spec, args.overrides)]
            width = max(len(k) for k, _, _ in rows)
            print("\n".join(f"  {k:<{width}}  {v}  [{source}]" for k, v, source in rows) + "\n")
    return 0


def cmd_plan(args) -> int:
    from rich.table import Table

    from posttrain.runner import plan
    from posttrain.store import RunStore

    recipe = _load(args)
    steps = plan(recipe, RunStore(_run_dir(args, recipe)), args.only, args.start, args.force)
    table = Table(title=f"{recipe.name} -> {_run_dir(args, recipe)}")
    for col in ("stage", "kind", "needs", "fingerprint", "action", "why"):
        table.add_column(col)
    colors = {"cached": "green", "run": "yellow", "resume": "cyan", "skip": "dim"}
    for s in steps:
        table.add_row(s.name, s.kind, ", ".join(s.upstream) or "-", s.fingerprint,
                      f"[{colors[s.action]}]{s.action}[/]", s.reason)
    console = _console()
    console.print(table)
    _print_drift(console, {s.name: s.warning for s in steps})
    return 0


def _print_drift(console, warnings: dict[str, str]) -> None:
    """Name each cached stage made with other package versions (they stay cached: versions are not in the
    fingerprint, so a library upgrade does not silently recompute a whole run)."""
    from rich.markup import escape

    for name, warning in warnings.items():
        if warning:
            console.print(f"[yellow]warning[/]: stage '{name}' {escape(warning)}")


def cmd_run(args) -> int:
    from contextlib import nullcontext

    from rich.markup import escape

    from posttrain.progress import console_stream, stage_output
    from posttrain.runner import run

    recipe = _load(args)
    run_dir = _run_dir(args, recipe)
    # Quiet unless --verbose: each stage's own output goes to its stage.log, the console keeps a line per stage.
    stream = None if args.verbose else console_stream()
    console = _console(stream)
    capture = (lambda name, stage_dir: stage_output(name, stage_dir, console)) if stream else \
        (lambda name, stage_dir: nullcontext())
    steps = run(recipe, run_dir, args.only, args.start, args.force, args.resume,
                echo=lambda m: console.print(escape(m), soft_wrap=True), capture=capture)
    done = [s.name for s in steps if s.action == "cached"]
    if done and len(done) == len([s for s in steps if s.action != "skip"]):
        console.print(f"[green]nothing to do[/]: all {len(done)} stages cached in {run_dir}")
    else:
        console.print(f"[green]done[/]: {run_dir}")
    return 0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def cmd_status(args) -> int:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from posttrain.progress import headline
    from posttrain.store import RunStore, version_drift

    run_dir = _require_run_dir(args.run_dir)
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    names = info.get("stages") or sorted(p.name for p in run_dir.iterdir() if (p / "manifest.json").exists())
    store = RunStore(run_dir)
    # One line per stage at any width: the headline is cut with an ellipsis, never wrapped (the manifest has it all).
    rows = []
    for name in names:
        m = store.manifest(name)
        if m is None:
            rows.append((name, "-", "not run", "-", "-", ""))
            continue
        rows.append((name, m["kind"], m["status"], _duration(m["wall_time_s"]), m["fingerprint"][:8],
                     headline(m["metrics"]) or (m.get("error") or "")))
    console = _console()
    table = Table(title=f"{info.get('recipe', run_dir.name)} ({run_dir})", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0),
                  show_edge=False)
    columns = ("stage", "kind", "status", "time", "fingerprint")
    widths = [max(len(col), *(len(r[i]) for r in rows)) for i, col in enumerate(columns)]
    for col, width in zip(columns, widths):
        table.add_column(col, no_wrap=True, min_width=width)
    table.add_column("headline", no_wrap=True)
    # The headline gets what is left (2 characters between columns), cut with an ellipsis, never wrapped.
    room = max(10, console.width - sum(widths) - 2 * len(widths) - 1)
    colors = {"complete": "green", "failed": "red", "not run": "dim"}
    for name, kind, status, time_, fingerprint, text in rows:
        text = text if len(text) <= room else text[:room - 1] + "…"
        table.add_row(*map(escape, (name, kind)), f"[{colors.get(status, 'yellow')}]{status}[/]",
                      *map(escape, (time_, fingerprint, text)))
    console.print(table)
    _print_drift(console, {name: version_drift(store.manifest(name)) for name in names})
    return 0


def _require_run_dir(path: str) -> Path:
    from posttrain.data import DataError

    run_dir = Path(path)
    if not run_dir.is_dir() or not any(run_dir.glob("*/manifest.json")):
        raise DataError(f"{run_dir}: not a run folder (no <stage>/manifest.json inside); runs go to runs/<recipe name>/")
    return run_dir


def cmd_report(args) -> int:
    from posttrain.eval.report import build_report

    run_dir = _require_run_dir(args.run_dir)
    report_stages = [json.loads(m.read_text()) for m in sorted(run_dir.glob("*/manifest.json"))]
    existing = [m["artifacts"]["report"] for m in report_stages if m.get("kind") == "report" and m.get("artifacts")]
    # Rebuild where the recipe's report stage put it; a run without one gets run_dir/report.
    out = Path(args.out) if args.out else run_dir / existing[0] if existing else run_dir / "report"
    path = build_report(run_dir, out, reference=args.reference)
    _console().print(f"[green]report[/]: {path}")
    return 0


def cmd_inspect(args) -> int:
    """Show how one SFT example is tokenized and which tokens are trained."""
    from posttrain.stages.sft import inspect_example

    recipe = _load(args)
    spec = recipe.stages.get(args.stage)
    if spec is None or spec.kind != "sft":
        sfts = [n for n, s in recipe.stages.items() if s.kind == "sft"]
        raise UsageError(f"--stage must name an sft stage ({', '.join(sfts) or 'none in this recipe'})")
    from posttrain.stage import Context
    from posttrain.store import RunStore

    run_dir = _run_dir(args, recipe)
    store = RunStore(run_dir)
    manifests = {d: store.manifest(d) for d in spec.deps}
    unfinished = [d for d, m in manifests.items() if not m or m.get("status") != "complete"]
    if unfinished:
        # every unfinished stage upstream of this one, in run order: `--only` needs its own upstream finished
        todo = [n for n in recipe.upstream(args.stage) if (store.manifest(n) or {}).get("status") != "complete"]
        extra = " ".join([*args.overrides, *([f"--out {args.out}"] if args.out else [])])
        steps = " && ".join(f"posttrain run {args.recipe} {extra} --only {n}".replace("  ", " ") for n in todo)
        raise UsageError(f"inspect needs {', '.join(unfinished)} to have finished; run: {steps}")
    artifacts = {d: store.artifact_paths(m) for d, m in manifests.items()}
    ctx = Context(args.stage, run_dir / args.stage, run_dir, {}, artifacts)
    print(inspect_example(spec.config, ctx, index=args.index))
    return 0


def stage_reference(kinds: list[str] | None = None) -> str:
    """Markdown: every stage kind's outputs and recipe keys, straight from the Config dataclasses."""
    import posttrain.stages  # noqa: F401
    from posttrain.schema import describe
    from posttrain.stage import STAGES

    parts = [] if kinds else ["# Stage reference\n\nEvery stage kind, its outputs and its recipe keys, generated from the "
                              "code: `posttrain keys > docs/stages.md` (a test fails when this file is stale). A kind's code "
                              "is one file, `stages/<kind>.py`, or a folder, `stages/<kind>/`, when it has parts no other "
                              "kind uses.\n"]
    for kind in kinds or sorted(STAGES):
        stage = STAGES[kind]
        outs = ", ".join(f"`{o}` ({t.__name__.lower()})" for o, t in stage.outputs.items())
        room = stage.__module__.removeprefix("posttrain.stages.").split(".")  # sft, or rlvr.stage for a package
        code = f"stages/{room[0]}/" if len(room) > 1 else f"stages/{room[0]}.py"
        parts.append(f"### `{kind}`: {stage.description}\n\nOutputs: {outs}. Code: `{code}`\n\n"
                     "| key | type | default | meaning |\n|---|---|---|---|")
        parts += [f"| `{k}` | {t.replace(' | ', ' or ')} | {d} | {h} |" for k, t, d, h in describe(stage.Config)]
        parts.append("")
    return "\n".join(parts)


def cmd_keys(args) -> int:
    from posttrain.stage import STAGES

    import posttrain.stages  # noqa: F401

    unknown = [k for k in args.kinds if k not in STAGES]
    if unknown:
        raise UsageError(f"unknown stage kind(s) {', '.join(unknown)}; kinds: {', '.join(sorted(STAGES))}")
    print(stage_reference(args.kinds))
    return 0


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a row number 0, 1, 2, ..., got {text!r:.40}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posttrain", description="Post-training recipes as a cached, resumable stage graph.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def recipe_cmd(name, fn, help):
        c = sub.add_parser(name, help=help)
        c.add_argument("recipe")
        c.add_argument("overrides", nargs="*", help="key=value overrides (OmegaConf dotlist)")
        c.add_argument("--out", help="run folder (default runs/<recipe name>)")
        c.set_defaults(fn=fn)
        return c

    recipe_cmd("validate", cmd_validate, "validate a recipe fully, without heavy work")
    c = recipe_cmd("config", cmd_config, "every stage's resolved config, each value marked recipe, override or default")
    c.add_argument("--stage", help="show just this stage")
    for name, fn, help in (("run", cmd_run, "run a recipe"), ("plan", cmd_plan, "show what `run` would do")):
        c = recipe_cmd(name, fn, help)
        c.add_argument("--only", help="run just this stage (its upstream must have finished)")
        c.add_argument("--from", dest="start", help="re-run this stage and everything downstream of it")
        c.add_argument("--force", action="store_true", help="recompute the selected stages even if cached")
        c.add_argument("--resume", default="auto", help="off | on | auto | a checkpoint path (default auto)")
    c = recipe_cmd("inspect", cmd_inspect, "show one tokenized SFT example with its trained tokens marked")
    c.add_argument("--stage", default="sft")
    c.add_argument("--index", type=_non_negative, default=0)
    c = sub.add_parser("keys", help="every stage kind's recipe keys, types, defaults and meaning")
    c.add_argument("kinds", nargs="*")
    c.set_defaults(fn=cmd_keys)
    c = sub.add_parser("status", help="every stage's state, fingerprint, wall time and headline metrics")
    c.add_argument("run_dir")
    c.set_defaults(fn=cmd_status)
    c = sub.add_parser("report", help="(re)build the report from a run folder's manifests")
    c.add_argument("run_dir")
    c.add_argument("--out")
    c.add_argument("--reference", help="a JSON/YAML file of published reference numbers")
    c.set_defaults(fn=cmd_report)
    return p


def main(argv=None) -> int:
    from posttrain.cluster import ClusterError
    from posttrain.data import DataError
    from posttrain.recipe import RecipeError
    from posttrain.runner import PlanError, StageFailed
    from posttrain.store import LockedError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (argparse stops collecting positionals at the first option)
    if extra and (not hasattr(args, "overrides") or any("=" not in x or x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("posttrain").setLevel(logging.INFO)
    if not args.verbose:  # raised by TRL on every step; nothing a user can act on
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    try:
        return args.fn(args)
    except BrokenPipeError:  # e.g. `posttrain keys | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the final flush cannot fail again
        return 0
    except (RecipeError, PlanError, DataError, UsageError, ClusterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except LockedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
