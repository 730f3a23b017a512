"""Fault injection on the mini chain (data -> base -> sft -> dpo -> rlvr): `posttrain run` is SIGKILLed at
seeded points, restarted, killed again, and finally finished. After every kill no stage is marked complete
without its artifacts, no manifest is corrupt, the checkpoint a resume would load is whole, and the work lost
is at most save_steps; at the end the weights and training curves equal an uninterrupted run's.

Kill sites (the child process kills itself with SIGKILL at the n-th occurrence, so the point is exact):
  data        before the n-th jsonl artifact is renamed into place (data preparation)
  step        after the n-th optimizer step (mid-training, between checkpoints)
  checkpoint  half-way through writing the n-th trainer_state.json (a torn checkpoint)
  manifest    before the n-th manifest.json is renamed into place
  between     as the n-th stage starts (after the previous one completed)
  timer       n/10 seconds after the first stage starts (anywhere)
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, write_mini_chain

SITES = ["data", "step", "checkpoint", "manifest", "timer", "between"]
TRAINING = ("base", "sft", "dpo", "rlvr")
SETPRIV = shutil.which("setpriv")


# -- the child: install one kill site, then run the real CLI ------------------------------------------------
def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _install(site: str, n: int) -> None:
    count = {"n": 0}

    def hit() -> bool:
        count["n"] += 1
        return count["n"] == n

    if site in ("data", "manifest"):
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            name = Path(dst).name
            if (name == "manifest.json" if site == "manifest" else name.endswith(".jsonl")) and hit():
                _die()
            return real_replace(src, dst, *a, **k)

        os.replace = replace
    elif site == "step":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(lambda *_: hit() and _die())
    elif site == "checkpoint":
        from transformers.trainer_callback import TrainerState

        real_save = TrainerState.save_to_json

        def save_to_json(self, path):
            if hit():
                text = json.dumps(self.__dict__, default=str)
                Path(path).write_text(text[: len(text) // 2])
                _die()
            return real_save(self, path)

        TrainerState.save_to_json = save_to_json
    elif site in ("between", "timer"):
        import threading

        import posttrain.runner as runner

        real_execute = runner._execute

        def execute(*a, **k):
            if site == "between" and hit():
                _die()
            if site == "timer" and count["n"] == 0:
                count["n"] = 1
                threading.Timer(n / 10, _die).start()
            return real_execute(*a, **k)

        runner._execute = execute


def child() -> None:
    """python -c '...child()' SITE N posttrain-args..."""
    site, n = sys.argv[1], int(sys.argv[2])
    _install(site, n)
    from posttrain.cli import main

    sys.exit(main(sys.argv[3:]))


def run_killed(recipe: Path, run_dir: Path, site: str, n: int) -> int:
    """Run `posttrain run` in a child that SIGKILLs itself at (site, n); return its exit code (-9 if killed).
    The child leads its own process group, so reward workers it forked, which outlive a killed parent,
    can be ended with it; its output goes to a file, which such orphans cannot hold open the way they hold a pipe."""
    code = f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from test_faults import child; child()"
    with open(run_dir.parent / "child.log", "w+") as log:
        proc = subprocess.Popen([sys.executable, "-c", code, site, str(n), "run", str(recipe), "--out", str(run_dir)],
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=log, start_new_session=True)
        try:
            returncode = proc.wait(timeout=600)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.seek(0)
        assert returncode in (0, -signal.SIGKILL), log.read()[-3000:]
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


def check_equal_to_uninterrupted(run_dir: Path, reference: Path) -> None:
    from safetensors.torch import load_file

    got, want = _manifests(run_dir), _manifests(reference)
    assert {n: m["status"] for n, m in got.items()} == {n: "complete" for n in want}
    for name in TRAINING:
        assert got[name]["metrics"] == want[name]["metrics"], name
        a, b = (load_file(d / name / "model" / "model.safetensors") for d in (run_dir, reference))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), f"{name}: weights differ"
        steps = _logged_steps(run_dir / name)
        assert steps == sorted(set(steps)) == _logged_steps(reference / name), f"{name}: steps replayed or missing"
        losses = [[r["loss"] for r in map(json.loads, (d / name / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
                  for d in (run_dir, reference)]
        assert losses[0] == losses[1], f"{name}: training curve differs"


# -- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """(recipe path, loaded recipe, an uninterrupted run folder)."""
    from posttrain.recipe import load
    from posttrain.runner import run

    recipe = write_mini_chain(tmp_path_factory.mktemp("faults"))
    reference = recipe.parent / "reference"
    run(load(recipe), reference, echo=lambda m: None)
    return recipe, load(recipe), reference


# Kill n is drawn from these ranges: small enough that the point usually comes before the run ends.
N_RANGES = {"data": (1, 3), "step": (1, 6), "checkpoint": (1, 3), "manifest": (1, 4), "between": (2, 2), "timer": (1, 20)}


def kill_sites(rng: random.Random, kills: int, every_site: bool) -> list[str]:
    """Every site once, in the order they first occur along the chain, or a seeded draw with repeats."""
    return list(SITES) if every_site else [rng.choice(SITES) for _ in range(kills)]


def campaign(chain, run_dir: Path, seed: int, kills: int, every_site: bool = False) -> list[dict]:
    """Kill, check, restart, ... then finish in this process and compare with the uninterrupted run."""
    from posttrain.runner import run

    recipe_path, recipe, reference = chain
    rng = random.Random(seed)
    log = []
    for site in kill_sites(rng, kills, every_site):
        if site == "data" and _manifests(run_dir).get("data", {}).get("status") == "complete":
            site = rng.choice(SITES[1:])  # data preparation is over: kill somewhere else
        n = rng.randint(*N_RANGES[site])
        code = run_killed(recipe_path, run_dir, site, n)
        running = [s for s, m in _manifests(run_dir).items() if m["status"] != "complete"]
        log.append({"site": site, "n": n, "killed": code != 0, "interrupted": running,
                    "lost": check_after_kill(recipe, run_dir) if code else {}})
        if code == 0:
            break  # the run finished before the kill point came
    run(recipe, run_dir, echo=lambda m: None)
    check_equal_to_uninterrupted(run_dir, reference)
    return log


def test_kill_at_every_site_then_recover_exactly(chain, tmp_path):
    log = campaign(chain, tmp_path / "run", seed=0, kills=len(SITES), every_site=True)
    print(json.dumps(log))
    assert len(log) == len(SITES) and all(k["killed"] for k in log), log


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 10))
def test_kill_campaigns_slow(chain, tmp_path, seed):
    log = campaign(chain, tmp_path / "run", seed=seed, kills=6)
    print(json.dumps(log))


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
        proc = subprocess.run([SETPRIV, f"--bounding-set={caps}", f"--inh-caps={caps}", sys.executable, "-m",
                               "posttrain.cli", "run", str(recipe_path), "--out", str(run_dir)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
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

    def small_files():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "posttrain.cli", "run", str(recipe_path), "--out", str(run_dir)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
                          preexec_fn=small_files)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "stage 'dpo' failed" in proc.stderr and "File too large" in proc.stderr
    manifests = _manifests(run_dir)
    assert manifests["dpo"]["status"] == "failed" and "rlvr" not in manifests
    check_after_kill(recipe, run_dir)
    from posttrain.runner import run

    run(recipe, run_dir, echo=lambda m: None)
    check_equal_to_uninterrupted(run_dir, reference)


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


@pytest.mark.parametrize("stage", ["dpo", "rlvr"])
def test_killed_after_the_last_checkpoint_reports_the_same_metrics(chain, tmp_path, stage):
    """Killed after the final checkpoint but before the complete manifest: the resume loads that checkpoint
    instead of training, and must still report the headline metrics (DPO margins, RLVR rewards) it had."""
    from posttrain.runner import run

    recipe_path, recipe, reference = chain
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    for name in recipe.downstream(stage)[1:]:
        shutil.rmtree(run_dir / name)
    manifest = json.loads((run_dir / stage / "manifest.json").read_text())
    (run_dir / stage / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    shutil.rmtree(run_dir / stage / "model")
    run(recipe, run_dir, echo=lambda m: None)
    check_equal_to_uninterrupted(run_dir, reference)
