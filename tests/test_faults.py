"""Fault injection on the mini chain (data -> base -> sft -> dpo -> rlvr): `posttrain run` is SIGKILLed at
seeded points, restarted, killed again, and finally finished. After every kill no stage is marked complete
without its artifacts, no manifest is corrupt, the checkpoint a resume would load is whole, and the work lost
is at most save_steps; at the end the weights and training curves equal an uninterrupted run's and no temp
file of an interrupted write is left.

Kill sites (the child process kills itself with SIGKILL at the n-th occurrence, so the point is exact):
  data        before the n-th jsonl artifact is renamed into place (a data stage writing its outputs)
  read        after the n-th row is read from a data file (a training stage preparing its data)
  step        after the n-th optimizer step (mid-training, between checkpoints)
  checkpoint  half-way through writing the n-th trainer_state.json (a torn checkpoint)
  final       after the final checkpoint is written whole, before the trainer rotates checkpoints and logs
              its summary row
  manifest    before the n-th manifest.json is renamed into place
  between     as the n-th stage starts (after the previous one completed)
  timer       n/10 seconds after the first stage starts (anywhere)

Two kinds of campaign: along the whole chain (every site once), and aimed at one training stage (SFT, DPO
or RLVR), where only that stage runs and counts occurrences, with at least 10 kills each (50 when slow).
Each child runs the real command line, `posttrain run`, forked by a fork server (killserver.py): a fresh
interpreter that imports torch, TRL and posttrain once and forks only while it provably holds one thread.
Forking from pytest itself (multi-threaded) could deadlock a child on a lock another thread held at the fork,
and did (issue 17). Cost, measured here (2 CPU cores): the server starts in ~11 s, once per module;
a child killed at the first optimizer step of the base stage then takes ~1.3 s, against ~10.6 s for a fresh
interpreter per child. Should the server ever hold a second thread, it refuses to fork and the child falls
back to a fresh interpreter (with a warning; test_kill_at_every_site asserts it did not happen). Every child
has a deadline (CHILD_DEADLINE_S): past it, its process group and the server are killed and the test fails
with the child's log.
"""
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from children import alive, run_with_deadline
from conftest import write_mini_chain
from killserver import CHILD_DEADLINE_S, KillServer

SITES = ["data", "between", "step", "checkpoint", "manifest", "timer"]  # the order they first occur along the chain
STAGE_SITES = ["read", "step", "checkpoint", "manifest", "timer", "between"]
TRAINING = ("base", "sft", "dpo", "rlvr")
SETPRIV = shutil.which("setpriv")


# -- the children: forked by the kill server (killserver.py), each under a deadline ---------------------------
@pytest.fixture(scope="module")
def killer(tmp_path_factory):
    server = KillServer(tmp_path_factory.mktemp("killserver"))
    yield server
    server.stop()


def run_killed(killer: KillServer, recipe: Path, run_dir: Path, site: str, n: int, stage: str | None = None,
               timeout: float = CHILD_DEADLINE_S) -> int:
    """Run `posttrain run` (only `stage`, when given) in a child that SIGKILLs itself at (site, n); return
    its exit code (-9 if killed). Its output goes to child.log next to the run folder."""
    log_path = run_dir.parent / "child.log"
    request = {"site": site, "n": n, "stage": stage, "recipe": str(recipe), "run_dir": str(run_dir), "log": str(log_path)}
    returncode = killer.run(request, timeout)
    assert returncode in (0, -signal.SIGKILL), log_path.read_text()[-3000:]
    return returncode

# -- the checks -------------------------------------------------------------------------------------------
def _manifests(run_dir: Path) -> dict[str, dict]:
    found = {}
    for path in run_dir.glob("*/manifest.json"):
        found[path.parent.name] = json.loads(path.read_text())  # never corrupt: always parses
    return found


def _logged_steps(stage_dir: Path) -> list[int]:
    path = stage_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def check_after_kill(recipe, run_dir: Path) -> dict:
    """The invariants that must hold whenever a run dies; returns what was lost in the interrupted stage."""
    from safetensors import safe_open

    from posttrain.store import RunStore
    from posttrain.training import latest_checkpoint

    store = RunStore(run_dir)
    lost = {}
    for name, m in _manifests(run_dir).items():
        if m["status"] == "complete":
            assert not store.missing_artifacts(m), f"{name} is marked complete without its artifacts"
            assert set(m["artifacts"]) == set(recipe.stages[name].stage.outputs)
            continue
        if name not in TRAINING:
            continue
        checkpoint = latest_checkpoint(run_dir / name / "checkpoints")
        resumed_at = 0
        if checkpoint is not None:  # what a resume would load must be whole
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            resumed_at = state["global_step"]
            assert checkpoint.name == f"checkpoint-{resumed_at}"
            with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
                for key in f.keys():
                    f.get_tensor(key)
        reached = max(_logged_steps(run_dir / name), default=0)
        save_steps = recipe.stages[name].config.train.save_steps
        assert reached - resumed_at <= save_steps, f"{name}: reached step {reached}, resumes at {resumed_at}"
        lost[name] = reached - resumed_at
    return lost


def _curves(stage_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock figures, which differ between any two runs."""
    rows = map(json.loads, (stage_dir / "metrics.jsonl").read_text().splitlines())
    return [{k: v for k, v in r.items() if k != "time" and not k.endswith(("_time", "_runtime", "_per_second"))} for r in rows]


def check_equal_to_uninterrupted(run_dir: Path, reference: Path, stages=TRAINING) -> None:
    from safetensors.torch import load_file

    from posttrain.data import TEMP_SUFFIX

    got, want = _manifests(run_dir), _manifests(reference)
    assert {n: m["status"] for n, m in got.items()} == {n: "complete" for n in got} and set(stages) <= set(got) <= set(want)
    assert not list(run_dir.rglob(f"*{TEMP_SUFFIX}")), "temp files of interrupted writes were left"
    for name in stages:
        assert got[name]["metrics"] == want[name]["metrics"], name
        a, b = (load_file(d / name / "model" / "model.safetensors") for d in (run_dir, reference))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), f"{name}: weights differ"
        steps = _logged_steps(run_dir / name)
        assert steps == sorted(set(steps)) == _logged_steps(reference / name), f"{name}: steps replayed or missing"
        got_rows, want_rows = _curves(run_dir / name), _curves(reference / name)
        assert len(got_rows) == len(want_rows), f"{name}: {len(got_rows)} metrics rows, uninterrupted {len(want_rows)}"
        for got_row, want_row in zip(got_rows, want_rows):  # every value: loss, entropy, num_tokens, train_loss...
            assert got_row == want_row, f"{name}: metrics differ from the uninterrupted run's"


# -- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """(recipe path, loaded recipe, an uninterrupted run folder)."""
    from posttrain.recipe import load
    from posttrain.runner import run

    recipe = write_mini_chain(tmp_path_factory.mktemp("faults"))
    # Checkpoints that are not logging steps (base: saves at 3, 6, logs every 2; DPO: saves every 2, logs
    # every 3), so a resume must continue logging intervals cut by a checkpoint.
    text = recipe.read_text()
    for old, new in (("save_steps: 4, logging_steps: 2", "save_steps: 3, logging_steps: 2"),
                     ("batch_size: 4, save_steps: 2, logging_steps: 1", "batch_size: 4, save_steps: 2, logging_steps: 3")):
        assert text.count(old) == 1
        text = text.replace(old, new)
    recipe.write_text(text)
    reference = recipe.parent / "reference"
    run(load(recipe), reference, echo=lambda m: None)
    return recipe, load(recipe), reference


# Kill n is drawn from these ranges: small enough that the point usually comes before the run ends.
N_RANGES = {"data": (1, 3), "step": (1, 6), "checkpoint": (1, 3), "manifest": (1, 4), "between": (2, 2), "timer": (1, 20)}


def kill_sites(rng: random.Random, kills: int, every_site: bool) -> list[str]:
    """Every site once, in order, or a seeded draw with repeats."""
    return list(SITES) if every_site else [rng.choice(SITES) for _ in range(kills)]


def campaign(chain, killer: KillServer, run_dir: Path, seed: int, kills: int, every_site: bool = False) -> list[dict]:
    """Kill, check, restart, ... then finish in this process and compare with the uninterrupted run."""
    from posttrain.runner import run

    recipe_path, recipe, reference = chain
    rng = random.Random(seed)
    log = []
    for site in kill_sites(rng, kills, every_site):
        if site == "data" and _manifests(run_dir).get("data", {}).get("status") == "complete":
            site = rng.choice(SITES[1:])  # data preparation is over: kill somewhere else
        n = rng.randint(*N_RANGES[site])
        code = run_killed(killer, recipe_path, run_dir, site, n)
        running = [s for s, m in _manifests(run_dir).items() if m["status"] != "complete"]
        log.append({"site": site, "n": n, "killed": code != 0, "interrupted": running,
                    "lost": check_after_kill(recipe, run_dir) if code else {}})
        if code == 0:
            break  # the run finished before the kill point came
    run(recipe, run_dir, echo=lambda m: None)
    check_equal_to_uninterrupted(run_dir, reference)
    return log


def test_kill_at_every_site_then_recover_exactly(chain, killer, tmp_path):
    log = campaign(chain, killer, tmp_path / "run", seed=0, kills=len(SITES), every_site=True)
    print(json.dumps(log))
    assert len(log) == len(SITES) and all(k["killed"] for k in log), log
    assert killer.forks and not killer.fallbacks, "the kill server could not prove it holds one thread"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 10))
def test_kill_campaigns_slow(chain, killer, tmp_path, seed):
    log = campaign(chain, killer, tmp_path / "run", seed=seed, kills=6)
    print(json.dumps(log))


# In a campaign on one stage, n is drawn from these: most points fall inside the stage's remaining work.
STAGE_N_RANGES = {"read": (1, 60), "step": (1, 4), "checkpoint": (1, 2), "manifest": (1, 2), "between": (1, 1),
                  "timer": (1, 8)}


def stage_campaign(chain, killer: KillServer, run_dir: Path, stage: str, seed: int, kills: int) -> list[dict]:
    """Kill `stage` (run alone, its upstream finished) until `kills` kills have landed in it, checking after
    each; then finish it and compare with the uninterrupted run. When a restart finishes the stage before
    its kill point came, the result must already equal the uninterrupted run's, and the stage starts afresh."""
    from posttrain.runner import run

    recipe_path, recipe, reference = chain
    shutil.copytree(reference, run_dir)
    for name in recipe.downstream(stage):
        shutil.rmtree(run_dir / name)
    rng = random.Random(seed)
    log = []
    while sum(k["killed"] for k in log) < kills:
        site = rng.choice(STAGE_SITES)
        n = rng.randint(*STAGE_N_RANGES[site])
        code = run_killed(killer, recipe_path, run_dir, site, n, stage)
        if code:
            log.append({"site": site, "n": n, "killed": True, "lost": check_after_kill(recipe, run_dir).get(stage, 0)})
        else:
            check_equal_to_uninterrupted(run_dir, reference, stages=[stage])
            shutil.rmtree(run_dir / stage)
            log.append({"site": site, "n": n, "killed": False})
    run(recipe, run_dir, only=stage, echo=lambda m: None)
    check_equal_to_uninterrupted(run_dir, reference, stages=[stage])
    return log


@pytest.mark.parametrize("stage", ["sft", "dpo", "rlvr"])
def test_four_seeded_kills_in_each_training_stage_then_recover_exactly(chain, killer, tmp_path, stage):
    log = stage_campaign(chain, killer, tmp_path / "run", stage, seed=["sft", "dpo", "rlvr"].index(stage), kills=4)
    print(json.dumps(log))
    assert sum(k["killed"] for k in log) == 4


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo", "rlvr"])
def test_fifty_seeded_kills_in_each_training_stage_slow(chain, killer, tmp_path, stage):
    log = stage_campaign(chain, killer, tmp_path / "run", stage, seed=100 + ["sft", "dpo", "rlvr"].index(stage), kills=50)
    print(json.dumps(log))
    assert {k["site"] for k in log if k["killed"]} == set(STAGE_SITES)


# -- a disk that refuses writes -----------------------------------------------------------------------------
@pytest.mark.skipif(SETPRIV is None, reason="needs setpriv to drop root's permission override")
def test_read_only_run_folder_is_a_clear_error_and_nothing_is_corrupted(chain, tmp_path):
    """Root ignores permission bits, so the child drops CAP_DAC_OVERRIDE: then a read-only folder is read-only."""
    recipe_path, recipe, reference = chain
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "rlvr")  # unfinished work remains
    before = {p: p.read_bytes() for p in run_dir.rglob("manifest.json")}
    modes = {p: p.stat().st_mode for p in [run_dir, *run_dir.rglob("*")]}
    for p in modes:
        p.chmod(modes[p] & ~0o222)
    caps = "-dac_override,-dac_read_search"
    try:
        proc = run_with_deadline([SETPRIV, f"--bounding-set={caps}", f"--inh-caps={caps}", sys.executable, "-m",
                                  "posttrain.cli", "run", recipe_path, "--out", run_dir], CHILD_DEADLINE_S)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "cannot write to the run folder" in proc.stderr and str(run_dir) in proc.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("manifest.json")} == before
    from posttrain.runner import run

    run(recipe, run_dir, echo=lambda m: None)  # writable again: it continues where it was
    check_equal_to_uninterrupted(run_dir, reference)


def test_full_disk_mid_checkpoint_fails_cleanly_then_resumes(chain, tmp_path):
    """A file-size limit makes writes fail with EFBIG, as a full disk fails them with ENOSPC: the first
    checkpoint's weights cannot be written."""
    recipe_path, recipe, reference = chain
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "dpo")
    shutil.rmtree(run_dir / "rlvr")
    limit = (reference / "dpo" / "model" / "model.safetensors").stat().st_size // 2

    # Set in the child's own interpreter (a preexec_fn would run Python between fork and exec of this
    # multi-threaded process); SIGXFSZ ignored: a failed write, not a killed process.
    small_files = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                   "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); sys.argv[1:2] = []; "
                   "runpy.run_module('posttrain.cli', run_name='__main__')")
    proc = run_with_deadline([sys.executable, "-c", small_files, limit, "run", recipe_path, "--out", run_dir],
                             CHILD_DEADLINE_S)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "stage 'dpo' failed" in proc.stderr and "File too large" in proc.stderr
    manifests = _manifests(run_dir)
    assert manifests["dpo"]["status"] == "failed" and "rlvr" not in manifests
    check_after_kill(recipe, run_dir)
    from posttrain.runner import run

    run(recipe, run_dir, only="dpo", echo=lambda m: None)
    check_equal_to_uninterrupted(run_dir, reference, stages=["dpo"])


def test_deleted_upstream_artifact_is_detected_and_rerun_with_the_reason(chain, tmp_path):
    """(Editing one by hand is covered in test_runs.py.)"""
    from posttrain.runner import plan
    from posttrain.store import RunStore

    recipe_path, recipe, reference = chain
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "sft" / "model")
    steps = {s.name: s for s in plan(recipe, RunStore(run_dir))}
    assert steps["sft"].action == "run" and steps["sft"].reason == "model (sft/model) is missing"
    assert {n: s.action for n, s in steps.items()} == {"data": "cached", "base": "cached", "sft": "run", "dpo": "run",
                                                       "rlvr": "run"}
    assert "upstream sft will run" in steps["dpo"].reason


@pytest.mark.parametrize("stage", ["sft", "dpo", "rlvr"])
def test_killed_after_the_final_checkpoint_recovers_the_summary_and_the_checkpoint_limit(chain, killer, tmp_path,
                                                                                          stage):
    """Killed after the final checkpoint is written but before the trainer removes checkpoints beyond
    save_total_limit and logs its summary row (train_loss, total_flos, epoch): the re-run loads that checkpoint
    instead of training, and its curves (summary row included), headline metrics (DPO margins, RLVR rewards),
    weights and checkpoints must equal the uninterrupted run's."""
    from posttrain.runner import run

    recipe_path, recipe, reference = chain
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    for name in recipe.downstream(stage):
        shutil.rmtree(run_dir / name)
    assert run_killed(killer, recipe_path, run_dir, "final", 1, stage) == -signal.SIGKILL
    checkpoints = lambda d: sorted(p.name for p in (d / stage / "checkpoints").glob("checkpoint-*"))  # noqa: E731
    limit = recipe.stages[stage].config.train.save_total_limit
    assert len(checkpoints(run_dir)) == limit + 1  # the kill landed in the window: one checkpoint too many...
    assert not any("train_loss" in r for r in map(json.loads, (run_dir / stage / "metrics.jsonl").open()))  # ...no row
    run(recipe, run_dir, only=stage, echo=lambda m: None)
    check_equal_to_uninterrupted(run_dir, reference, stages=[stage])
    assert checkpoints(run_dir) == checkpoints(reference)


def test_a_hung_child_is_killed_at_its_deadline_and_the_test_fails_with_its_log(killer, tmp_path):
    """A child that never ends (as one deadlocked after a fork would) must fail the test, not hang it."""
    with pytest.raises(pytest.fail.Exception, match="(?s)2 s deadline.*hanging on purpose"):
        run_killed(killer, tmp_path / "recipe.yaml", tmp_path / "run", "hang", 1, timeout=2)
    deadline = time.monotonic() + 10  # SIGKILL was sent to its group; dying takes a moment
    while alive(killer.last_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(killer.last_pid), f"the hung child {killer.last_pid} is still running"
    assert killer.proc is None, "the server that forked it was stopped too"
