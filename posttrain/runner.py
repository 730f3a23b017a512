"""Plan and run a recipe's stages: cached stages are skipped, interrupted ones resumed, and a stage
only ever consumes upstream stages that finished."""
import shutil
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import yaml

from posttrain import cluster
from posttrain import store as st
from posttrain.recipe import Recipe, StageSpec, canonical_hash, resolved_stage_config
from posttrain.model_card import write_model_card
from posttrain.stage import Context, Model, output_path
from posttrain.data import atomic_open, follow_umask, remove_stale_temp_files, write_json
from posttrain.launch import follow, run_launched
from posttrain.changes import what_changed
from posttrain.progress import headline
from posttrain.provenance import command_text, posttrain_source


class PlanError(Exception):
    pass


class StageFailed(Exception):
    pass


@dataclass
class Step:
    name: str
    kind: str
    fingerprint: str
    action: str         # run | cached | resume | skip (not selected)
    reason: str
    upstream: dict
    inputs: dict
    warning: str = ""   # a cached stage made with other package versions (it is not recomputed for that)


def plan(recipe: Recipe, run_store: st.RunStore, only: str | None = None, start: str | None = None,
         force: bool = False) -> list[Step]:
    for flag, value in (("--only", only), ("--from", start)):
        if value is not None and value not in recipe.stages:
            raise PlanError(f"{flag} {value}: no such stage; stages: {', '.join(recipe.stages)}")
    selected = {only} if only else set(recipe.downstream(start)) if start else set(recipe.stages)
    forced = selected if force else set(recipe.downstream(start)) if start else set()
    steps: dict[str, Step] = {}
    for name, spec in recipe.stages.items():
        upstream = {d: steps[d].fingerprint for d in spec.deps}
        inputs = _inputs(spec, run_store.hashes)
        fp = st.fingerprint(spec.kind, resolved_stage_config(spec), upstream, inputs)
        action, reason = _decide(run_store, spec, fp, forced=name in forced, upstream=upstream, inputs=inputs)
        stale_upstream = [d for d in spec.deps if steps[d].action != "cached"]
        if name in selected and action == "cached" and stale_upstream:
            action, reason = "run", f"upstream {', '.join(stale_upstream)} will run"
        if name not in selected:
            if action != "cached" and any(name in recipe.stages[s].deps for s in selected):
                raise PlanError(f"stage '{name}' is needed by the selected stage(s) but has not finished "
                                f"({reason}); run it first or drop --only/--from")
            action = "cached" if action == "cached" else "skip"
        warning = st.version_drift(run_store.manifest(name)) if action == "cached" else ""
        steps[name] = Step(name, spec.kind, fp, action, reason, upstream, inputs, warning)
    run_store.hashes.save()
    return list(steps.values())


def _inputs(spec: StageSpec, hashes: st.HashCache) -> dict[str, str]:
    return st.inputs(spec.config, spec.stage.files(spec.config), hashes)


def _decide(run_store: st.RunStore, spec: StageSpec, fp: str, forced: bool, upstream: dict, inputs: dict) -> tuple[str, str]:
    name = spec.name
    manifest = run_store.manifest(name)
    if forced:
        return "run", "forced"
    if manifest is None:
        return "run", "never ran"
    if manifest.get("fingerprint") != fp:
        return "run", what_changed(manifest, run_store.stage_dir(name), resolved_stage_config(spec), upstream, inputs)
    if manifest.get("status") == st.COMPLETE:
        missing = run_store.missing_artifacts(manifest)
        return ("run", "; ".join(missing)) if missing else ("cached", "finished with the same fingerprint")
    progress = spec.stage.progress(spec.config, run_store.stage_dir(name))
    if progress:
        return "resume", f"interrupted ({manifest.get('status')}); continues from {progress}"
    return "run", f"previous attempt {manifest.get('status')}"


def run_fingerprint(recipe: Recipe, hashes: st.HashCache) -> str:
    """What every node of a multi-node run must agree on: the resolved recipe (overrides included) and the
    contents of its local input files."""
    inputs = {p: h for spec in recipe.stages.values() for p, h in _inputs(spec, hashes).items()}
    return canonical_hash({"recipe": recipe.hash, "inputs": inputs})


def run(recipe: Recipe, run_dir: Path, only: str | None = None, start: str | None = None, force: bool = False,
        resume: str = "auto", echo=print, capture=lambda name, stage_dir: nullcontext(),
        command_line: list[str] | None = None) -> list[Step]:
    """`capture(name, stage_dir)`: a context around each stage's work (the CLI's quiet mode sends its output to a log).
    `command_line`: the argv that asked for this run, recorded in run.json and each manifest it writes."""
    nodes, rank = cluster.nodes_needed(recipe), cluster.node_rank()
    cluster.check_environment(nodes)
    if rank != 0:
        _follow(recipe, run_dir, nodes, rank, echo)
        return []
    run_store = st.RunStore(run_dir)
    run_store.lock()
    coordinator, error = None, "node 0 was interrupted"
    try:
        steps = plan(recipe, run_store, only, start, force)
        if nodes > 1:  # before any work: every node must run the same recipe, overrides and data
            fingerprint = run_fingerprint(recipe, run_store.hashes)
            coordinator = cluster.Coordinator(nodes, fingerprint, cluster.store_timeout(recipe))
        remove_stale_temp_files(run_dir, recursive=False)
        invocation = {"recipe": recipe.name, "command_line": command_text(command_line),
                      "overrides": recipe.overrides, "posttrain": posttrain_source()}
        write_json(run_dir / "run.json", {"recipe": recipe.name, "recipe_path": str(recipe.path),
                                          "recipe_hash": recipe.hash, "stages": list(recipe.stages), **invocation,
                                          "packages": st.package_versions()})
        for step in steps:
            if step.action == "skip":
                continue
            if step.action == "cached":
                echo(f"[{step.name}] cached ({step.fingerprint})" + (f"; warning: {step.warning}" if step.warning else ""))
                continue
            echo(f"[{step.name}] {step.action}: {step.reason}")
            error = f"stage '{step.name}' failed"
            _execute(recipe.stages[step.name], step, run_store, resume, echo, coordinator, recipe.upstream(step.name),
                     capture, invocation)
        error = None
        return steps
    finally:
        if coordinator is not None:
            coordinator.finish(error)
        run_store.unlock()


def _follow(recipe: Recipe, run_dir: Path, nodes: int, rank: int, echo) -> None:
    """A non-zero node: no lock, no plan, no writes in the run folder; it joins node 0's launched stages."""
    if rank >= nodes:
        echo(f"node {rank}: the recipe uses at most {nodes} machines; nothing to do on this one")
        return
    # Read-only: the hash cache is node 0's to write.
    fingerprint = run_fingerprint(recipe, st.HashCache(Path(run_dir) / ".hashes.json"))
    follower = cluster.Follower(rank, fingerprint, cluster.store_timeout(recipe))
    try:
        follow(follower, rank, echo)
    except Exception as e:
        raise StageFailed(f"node {rank}: {e}") from None
    echo(f"node {rank}: node 0 finished the run")


def _execute(spec: StageSpec, step: Step, run_store: st.RunStore, resume: str, echo, coordinator=None,
             lineage: list[str] = (), capture=lambda name, stage_dir: nullcontext(), invocation: dict | None = None) -> None:
    stage_dir = run_store.stage_dir(spec.name)
    previous = run_store.manifest(spec.name)
    if step.action == "run" and stage_dir.exists() and (previous is None or previous.get("fingerprint") != step.fingerprint
                                                        or step.reason == "forced" or resume == "off"):
        shutil.rmtree(stage_dir)  # stale artifacts of another config must never be mixed in
    stage_dir.mkdir(parents=True, exist_ok=True)
    config = resolved_stage_config(spec)
    remove_stale_temp_files(stage_dir)
    with atomic_open(stage_dir / "config.resolved.yaml") as f:
        yaml.safe_dump({"kind": spec.kind, **config, "fingerprint": step.fingerprint}, f, sort_keys=False)
    upstream_artifacts = {d: run_store.artifact_paths(run_store.manifest(d)) for d in spec.deps}
    outputs = spec.stage.outputs
    ctx = Context(spec.name, stage_dir, run_store.run_dir, outputs, upstream_artifacts, resume, lineage=list(lineage))
    manifest = {
        "stage": spec.name, "kind": spec.kind, "status": st.RUNNING, "fingerprint": step.fingerprint,
        "upstream": step.upstream, "inputs": step.inputs, "versions": st.package_versions(),
        "hardware": st.hardware(), "started": st.now_iso(), "ended": None, "wall_time_s": None,
        "metrics": {}, "artifacts": {}, "error": None, "config": "config.resolved.yaml", **(invocation or {}),
    }
    run_store.write_manifest(spec.name, manifest)
    t0 = time.time()
    try:
        with capture(spec.name, stage_dir):
            launcher = getattr(spec.config, "launcher", None)
            if launcher is not None and launcher.type != "none":
                metrics, manifest["distributed"] = run_launched(spec.stage, spec.config, ctx, step.fingerprint, coordinator)
            else:
                metrics = spec.stage.run(spec.config, ctx) or {}
        missing = [o for o in outputs if not output_path(stage_dir, o, outputs[o]).exists()]
        if missing:
            raise StageFailed(f"stage '{spec.name}' finished without writing its declared output(s): {', '.join(missing)}")
        for o in (o for o, kind in outputs.items() if kind is Model):  # before the artifact hashes: it is part of it
            write_model_card(output_path(stage_dir, o, Model), recipe=(invocation or {}).get("recipe", run_store.run_dir.name), stage=spec.name,
                             kind=spec.kind, config=config, lineage=list(lineage), metrics=metrics,
                             versions=manifest["versions"], posttrain=(invocation or {}).get("posttrain"))
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)  # Ctrl-C: the next run resumes; no traceback to keep
        manifest.update(status=st.INTERRUPTED if interrupted else st.FAILED, ended=st.now_iso(), wall_time_s=st.elapsed(t0),
                        error="interrupted (Ctrl-C)" if interrupted else f"{type(e).__name__}: {e}",
                        traceback=None if interrupted else traceback.format_exc()[-4000:])
        try:
            run_store.write_manifest(spec.name, manifest)
        except OSError:  # a full or read-only disk: the atomic "running" manifest stays, which is still true
            pass
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise StageFailed(f"stage '{spec.name}' failed: {type(e).__name__}: {e}\n"
                          f"  (details: {stage_dir / 'manifest.json'})") from e
    follow_umask(stage_dir)
    # Relative to the run folder, so a run folder can be moved or copied whole.
    artifacts = {o: str(output_path(stage_dir, o, outputs[o]).relative_to(run_store.run_dir)) for o in outputs}
    manifest.update(status=st.COMPLETE, ended=st.now_iso(), wall_time_s=st.elapsed(t0), metrics=metrics, artifacts=artifacts,
                    artifact_hashes={o: run_store.hashes.tree(run_store.run_dir / p) for o, p in artifacts.items()})
    run_store.hashes.save()
    run_store.write_manifest(spec.name, manifest)  # last: a manifest that says complete means the artifacts are there
    echo(f"[{spec.name}] complete in {manifest['wall_time_s']:.1f}s {headline(metrics, spec.kind)}")
