"""posttrain: run, validate, plan, inspect, status and report. Exit codes: 0 ok, 1 a stage failed,
2 a bad recipe, bad data (found by validation or while a stage runs) or bad command line, 3 the run folder is locked."""
import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from posttrain.provenance import VersionAction  # standard library only: fine before the settings below

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
            kinds = {n: s.kind for n, s in recipe.stages.items()}
            rows = [(key, json.dumps(value, default=str, ensure_ascii=False), source)
                    for key, value, source in config_sources(spec, args.overrides, _run_dir(args, recipe), kinds)]
            width = max(len(k) for k, _, _ in rows)
            print("\n".join(f"  {k:<{width}}  {v}  [{source}]" for k, v, source in rows) + "\n")
    return 0


def cmd_plan(args) -> int:
    from rich.markup import escape

    from posttrain.runner import plan
    from posttrain.store import RunStore

    recipe = _load(args)
    steps = plan(recipe, RunStore(_run_dir(args, recipe)), args.only, args.start, args.force)
    # One line per stage, never wrapped by us (off a terminal too): the reason, with what changed, comes last.
    rows = [("stage", "kind", "needs", "fingerprint", "action", "why")] + [
        (s.name, s.kind, ", ".join(s.upstream) or "-", s.fingerprint, s.action, s.reason) for s in steps]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    colors = {"cached": "green", "run": "yellow", "resume": "cyan", "skip": "dim"}
    console = _console()
    console.print(escape(f"{recipe.name} -> {_run_dir(args, recipe)}"))
    for i, row in enumerate(rows):
        cells = [escape(text.ljust(width)) for text, width in zip(row, widths)]
        if i:
            cells[4] = f"[{colors[row[4]]}]{cells[4]}[/]"
        console.print("  ".join([*cells, escape(row[5])]))
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
    from posttrain.store import final_outputs

    recipe = _load(args)
    run_dir = _run_dir(args, recipe)
    # Quiet unless --verbose: each stage's own output goes to its stage.log, the console keeps a line per stage.
    stream = None if args.verbose else console_stream()
    console = _console(stream)
    capture = (lambda name, stage_dir: stage_output(name, stage_dir, console)) if stream else \
        (lambda name, stage_dir: nullcontext())
    steps = run(recipe, run_dir, args.only, args.start, args.force, args.resume,
                echo=lambda m: console.print(escape(m), soft_wrap=True), capture=capture, command_line=args.argv)
    done = [s.name for s in steps if s.action == "cached"]
    if done and len(done) == len([s for s in steps if s.action != "skip"]):
        console.print(f"[green]nothing to do[/]: all {len(done)} stages cached in {run_dir}")
    else:
        console.print(f"[green]done[/]: {run_dir}")
    for what, path in final_outputs(recipe, run_dir).items():
        console.print(f"{what}: {escape(str(path))}")
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
    from posttrain.store import RunStore, stale_stages, version_drift

    run_dir = _require_run_dir(args.run_dir, starting=True)
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    names = info.get("stages") or sorted(p.name for p in run_dir.iterdir() if (p / "manifest.json").exists())
    if not names:  # `posttrain run` holds the folder but is still planning (hashing its inputs)
        _console().print(f"{escape(str(run_dir))}: a run is starting (planning); no stage has started yet")
        return 0
    store = RunStore(run_dir)
    manifests = {name: store.manifest(name) for name in names}
    # One line per stage at any width: the headline is cut with an ellipsis, never wrapped (the manifest has it all).
    rows, stale_from = [], stale_stages(manifests)
    for name, m in manifests.items():
        if m is None:
            rows.append((name, "-", "not run", "-", "-", ""))
            continue
        stale = stale_from.get(name)
        text = f"made from an earlier {', '.join(stale)}" if stale else headline(m["metrics"], m["kind"]) or (m.get("error") or "")
        rows.append((name, m["kind"], "stale" if stale else m["status"], _duration(m["wall_time_s"]),
                     m["fingerprint"][:8], text))
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
    colors = {"complete": "green", "failed": "red", "not run": "dim", "stale": "dim"}
    for name, kind, status, time_, fingerprint, text in rows:
        text = text if len(text) <= room else text[:room - 1] + "…"
        table.add_row(*map(escape, (name, kind)), f"[{colors.get(status, 'yellow')}]{status}[/]",
                      *map(escape, (time_, fingerprint, text)))
    console.print(table)
    _print_drift(console, {name: version_drift(store.manifest(name)) for name in names})
    return 0


def _require_run_dir(path: str, starting: bool = False) -> Path:
    """A run folder; a recipe file names its own (runs/<recipe name>, where `run` puts it). starting: a run that
    is still planning (its lock or run.json, no manifest yet) counts too."""
    from posttrain.data import DataError

    run_dir = Path(path)
    if run_dir.is_file():
        run_dir = Path("runs") / _load(argparse.Namespace(recipe=path, overrides=[])).name
    begun = starting and any((run_dir / f).exists() for f in ("run.json", ".lock"))
    if not run_dir.is_dir() or not (begun or any(run_dir.glob("*/manifest.json"))):
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
    """Show one training example as the stage's trainer sees it (SFT, DPO, reward model, RLVR)."""
    from posttrain.inspect_views import INSPECTORS, inspect_stage

    recipe = _load(args)
    spec = recipe.stages.get(args.stage)
    if spec is None or spec.kind not in INSPECTORS:
        some = [f"{n} ({s.kind})" for n, s in recipe.stages.items() if s.kind in INSPECTORS]
        raise UsageError(f"--stage {args.stage}: inspect shows a stage of kind {', '.join(INSPECTORS)}; "
                         f"this recipe has: {', '.join(some) or 'none'}")
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
    print(inspect_stage(spec.kind, spec.config, ctx, args.index))
    return 0


def stage_reference(kinds: list[str] | None = None) -> str:
    """Markdown: every stage kind's outputs and recipe keys, straight from the Config dataclasses."""
    import posttrain.stages  # noqa: F401
    from posttrain.schema import describe
    from posttrain.stage import STAGES

    parts = [] if kinds else ["# Stage reference\n\nEvery stage kind, its outputs and its recipe keys, generated from the "
                              "code: `posttrain keys > docs/stages.md` (a test fails when this file is stale). A kind's code "
                              "is one file, `stages/<kind>.py`, or a folder, `stages/<kind>/`, when it has parts no other "
                              "kind uses. Where a training stage's default differs from TRL 1.16's, the meaning gives "
                              "TRL's value and why ours differs (posttrain/trl_defaults.py); `posttrain config` marks "
                              "those defaults.\n"]
    for kind in kinds or sorted(STAGES):
        stage = STAGES[kind]
        outs = ", ".join(f"`{o}` ({t.__name__.lower()})" for o, t in stage.outputs.items())
        room = stage.__module__.removeprefix("posttrain.stages.").split(".")  # sft, or rlvr.stage for a package
        code = f"stages/{room[0]}/" if len(room) > 1 else f"stages/{room[0]}.py"
        parts.append(f"### `{kind}`: {stage.description}\n\nOutputs: {outs}. Code: `{code}`\n\n"
                     "| key | type | default | meaning |\n|---|---|---|---|")
        parts += [f"| `{k}` | {t.replace(' | ', ' or ')} | {d} | {h}{_trl_note(kind, k)} |" for k, t, d, h in describe(stage.Config)]
        parts.append("")
    return "\n".join(parts)


def _trl_note(kind: str, key: str) -> str:
    """Where our default differs from TRL's: TRL's value and why."""
    from posttrain.trl_defaults import trl_default

    found = trl_default(kind, key)
    return f" TRL 1.16's default: `{found[0]!r}`; ours differs: {found[1]}." if found else ""


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


VERBOSE_HELP = "print each stage's own output (trainer logs, progress bars) as it happens instead of to its stage.log"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posttrain", description="Post-training recipes as a cached, resumable stage graph.")
    p.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("--version", action=VersionAction)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, fn, help):
        c = sub.add_parser(name, help=help, description=help)
        # -v after the subcommand too; SUPPRESS keeps a -v given before it
        c.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        c.set_defaults(fn=fn)
        return c

    def recipe_cmd(name, fn, help):
        c = command(name, fn, help)
        c.add_argument("recipe", help="the recipe YAML file")
        c.add_argument("overrides", nargs="*", help="key=value overrides (OmegaConf dotlist), e.g. stages.sft.train.learning_rate=1e-5")
        c.add_argument("--out", help="run folder (default runs/<recipe name>)")
        return c

    recipe_cmd("validate", cmd_validate, "validate a recipe fully, without heavy work")
    c = recipe_cmd("config", cmd_config, "every stage's resolved config, each value marked recipe, override or default")
    c.add_argument("--stage", help="show just this stage")
    for name, fn, help in (("run", cmd_run, "run a recipe"), ("plan", cmd_plan, "show what `run` would do, and why")):
        c = recipe_cmd(name, fn, help)
        c.add_argument("--only", help="run just this stage (its upstream must have finished)")
        c.add_argument("--from", dest="start", help="re-run this stage and everything downstream of it")
        c.add_argument("--force", action="store_true", help="recompute the selected stages even if cached")
        c.add_argument("--resume", default="auto", help="off | on | auto | a checkpoint path (default auto)")
    c = recipe_cmd("inspect", cmd_inspect, "show one training example as the stage's trainer sees it: an SFT "
                                           "example's trained tokens, a DPO pair, an RL prompt")
    c.add_argument("--stage", default="sft", help="an sft, dpo, reward_model or rlvr stage (default sft)")
    c.add_argument("--index", type=_non_negative, default=0, help="which example of the stage's data (default 0)")
    c = command("keys", cmd_keys, "every stage kind's recipe keys, types, defaults and meaning")
    c.add_argument("kinds", nargs="*", help="stage kinds to show (default all)")
    c = command("status", cmd_status, "every stage's state, fingerprint, wall time and headline metrics")
    c.add_argument("run_dir", help="a run folder, or a recipe file (then its run folder, runs/<recipe name>)")
    c = command("report", cmd_report, "(re)build the report from a run folder's manifests")
    c.add_argument("run_dir", help="a run folder, or a recipe file (then its run folder, runs/<recipe name>)")
    c.add_argument("--out", help="where to write the report (default: where the run's report stage put it)")
    c.add_argument("--reference", help="a JSON/YAML file of published reference numbers")
    return p


def main(argv=None) -> int:
    from posttrain.cluster import ClusterError
    from posttrain.data import DataError
    from posttrain.recipe import RecipeError
    from posttrain.runner import PlanError, StageFailed
    from posttrain.store import LockedError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = ["posttrain", *map(str, argv)]
    # key=value overrides may come after options (argparse stops collecting positionals at the first option)
    if extra and (not hasattr(args, "overrides") or any("=" not in x or x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    # timestamped: these lines land in each stage's stage.log (and on the console with -v)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")
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
        return 2 if isinstance(e.__cause__, DataError) else 1  # bad data found at run time is still bad input
    except KeyboardInterrupt:  # Ctrl-C: the stage's manifest says interrupted; a traceback would say nothing more
        print("\ninterrupted" + ("; the same command again resumes where this stopped" if args.command == "run" else ""),
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
