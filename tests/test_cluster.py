"""A simulated cluster: two `posttrain run` processes on this machine act as two nodes (NODE_RANK 0 and 1,
MASTER_ADDR 127.0.0.1, gloo, one process each) sharing one --out. Every Python process of both nodes carries
an audit hook (sitecustomize) that logs each write, rename, mkdir or delete under the run folder, so the
test sees exactly what node 1 touches. Every subprocess has a timeout that kills its whole process group."""
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_recipe
from posttrain import cluster
from posttrain.data import DataError
from posttrain.recipe import load
from posttrain.runner import run
from posttrain.store import RunStore

TINY = "{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2, intermediate_size: 64}"
RECIPE = f"""
name: cluster
stages:
  data: {{kind: tinyworld, pretrain_rows: 200, sft_rows: 48, rl_rows: 8}}
  base:
    kind: pretrain
    model: builtin:tiny
    data: ${{stages.data.output.pretrain}}
    architecture: {TINY}
    max_length: 96
    train: {{learning_rate: 3.0e-3, max_steps: 4, per_device_train_batch_size: 8, save_steps: 4, logging_steps: 2}}
  select:
    kind: select
    method: grape
    model: ${{stages.base.output.model}}
    data: ${{stages.data.output.sft_candidates}}
  sft:
    kind: sft
    model: ${{stages.base.output.model}}
    data: ${{stages.select.output.data}}
    max_length: 128
    train: {{learning_rate: 3.0e-3, max_steps: 6, per_device_train_batch_size: 4, save_steps: 2, logging_steps: 1}}
    launcher: {{type: accelerate, num_processes: 1, num_machines: 2, timeout_minutes: 3}}
  eval:
    kind: eval
    models: {{sft: "${{stages.sft.output.model}}"}}
    tasks: [{{name: tinyworld, limit: 4}}]
    max_new_tokens: 8
    batch_size: 4
  report:
    kind: report
    results: ["${{stages.eval.output.results}}"]
"""
ONE_NODE = ["stages.sft.launcher.num_machines=1", "stages.sft.launcher.num_processes=2"]

AUDIT = r'''
import os, sys, time
ROOT, LOG = os.environ["AUDIT_ROOT"], os.open(os.environ["AUDIT_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
PAUSE, RELEASE = os.environ.get("AUDIT_PAUSE_AT"), os.environ.get("AUDIT_RELEASE", "")
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.truncate": 1, "shutil.rmtree": 1, "os.chmod": 1,
          "os.utime": 1, "os.rename": 2, "os.link": 2, "os.symlink": 2}

def hook(event, args):
    if event == "open":
        path, mode, flags = args
        paths = [path] if (mode and any(c in str(mode) for c in "wax+")) or (flags or 0) & WRITE else []
    else:
        paths = args[:EVENTS.get(event, 0)]
    for p in paths:
        if isinstance(p, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(p)).startswith(ROOT):
            who = os.path.basename(sys.argv[0]) if sys.argv else "?"
            os.write(LOG, f"{os.environ.get('NODE_RANK')}\t{who}\t{event}\t{os.path.abspath(os.fsdecode(p))}\n".encode())
            if PAUSE and event == "open" and str(p).endswith(PAUSE):
                os.write(LOG, b"paused\n")
                while not os.path.exists(RELEASE):
                    time.sleep(0.1)

sys.addaudithook(hook)
'''


def _start_nodes(tmp_path: Path, recipe: Path, out: Path, extra=((), ()), env=None) -> list[subprocess.Popen]:
    """Two nodes of one cluster, each in its own process group (a node dies whole, as a machine would)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(AUDIT)
    port = cluster.free_port()
    procs = []
    for rank in (0, 1):
        node_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NODE_RANK": str(rank),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "AUDIT_ROOT": str(out) + os.sep,
                    "AUDIT_LOG": str(tmp_path / "audit.log"),
                    "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]), **(env or {})}
        log = open(tmp_path / f"node{rank}.log", "a")
        procs.append(subprocess.Popen([sys.executable, "-m", "posttrain.cli", "run", str(recipe), "--out", str(out),
                                       *extra[rank]], env=node_env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=tmp_path))
        log.close()
    return procs


def _kill(proc: subprocess.Popen) -> None:
    """A machine dying: its process group and every descendant (torch's workers run in sessions of their own)."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    """Exit codes; past the timeout every node still running is killed with its children and the test fails."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            _kill(p)


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("node*.log")))


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "sft" / "model" / "model.safetensors")


def _assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ in {different[:5]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same recipe on one node with two processes: the weights a two-node run must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    recipe = write_recipe(root, RECIPE.split("  eval:")[0])  # up to the training stage
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(root / "node0.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "run", str(recipe), "--out", str(root / "run"),
                                 *ONE_NODE], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    assert _wait([proc], 300) == [0], _logs(root)
    return _weights(root / "run")


@pytest.mark.slow  # ~95 s: a one-node reference run plus two nodes of four processes
def test_two_nodes_one_writer_same_weights_as_one_node(tmp_path, reference):
    recipe, out = write_recipe(tmp_path, RECIPE), tmp_path / "run"
    codes = _wait(_start_nodes(tmp_path, recipe, out), 300)
    assert codes == [0, 0], _logs(tmp_path)
    manifests = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/manifest.json")}
    assert {n: m["status"] for n, m in manifests.items()} == dict.fromkeys(
        ["data", "base", "select", "sft", "eval", "report"], "complete")
    # One process group of two ranks, with the recipe's timeout (3 minutes), not gloo's or NCCL's default.
    group = {k: manifests["sft"]["distributed"].get(k) for k in ("world_size", "backend", "timeout_s", "mixed_precision")}
    assert group == {"world_size": 2, "backend": "gloo", "timeout_s": 180.0, "mixed_precision": "no"}
    records = [line.split("\t") for line in (tmp_path / "audit.log").read_text().splitlines()]
    node1 = [r for r in records if r[0] == "1"]
    # Node 1's only writes are its torch worker's own checkpoint files (its RNG state); its `posttrain run`
    # process wrote, renamed and deleted nothing.
    assert node1 and all(r[1] == "launch.py" and r[3].startswith(str(out / "sft" / "checkpoints")) for r in node1), node1
    assert any(r[1] == "cli.py" and r[0] == "0" for r in records)  # the hook does see the coordinator's writes
    _assert_same_weights(_weights(out), reference)


def test_a_node_with_another_override_fails_before_any_work(tmp_path):
    recipe, out = write_recipe(tmp_path, RECIPE), tmp_path / "run"
    procs = _start_nodes(tmp_path, recipe, out, extra=((), ("stages.sft.train.learning_rate=1.0e-3",)))
    assert _wait(procs, 120) == [2, 2], _logs(tmp_path)
    logs = _logs(tmp_path)
    assert "node(s) 1 run a different recipe, overrides or data than node 0" in logs and "Traceback" not in logs
    assert not list(out.glob("*/")), "no stage may start"


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])
def test_a_node_killed_mid_stage_both_restart_and_the_stage_resumes_exactly(tmp_path, reference, victim):
    recipe, out = write_recipe(tmp_path, RECIPE), tmp_path / "run"
    release = tmp_path / "release"
    # Rank 0 (on node 0) stops while saving checkpoint-4: mid-stage, deterministically, whatever the CPU load.
    procs = _start_nodes(tmp_path, recipe, out, env={"AUDIT_PAUSE_AT": "sft/checkpoints/checkpoint-4/trainer_state.json",
                                                     "AUDIT_RELEASE": str(release)})
    try:
        deadline = time.monotonic() + 240
        audit = tmp_path / "audit.log"
        while not (audit.exists() and "paused" in audit.read_text()):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), _logs(tmp_path)
            time.sleep(0.2)
        _kill(procs[victim])
        release.touch()
        survivor = procs[1 - victim]
        # The other node notices (a dead peer breaks the collective) and stops by itself, without hanging.
        assert _wait([survivor], 200)[0] != 0, _logs(tmp_path)
    finally:
        for p in procs:
            _kill(p)
    assert json.loads((out / "sft" / "manifest.json").read_text())["status"] != "complete"
    codes = _wait(_start_nodes(tmp_path, recipe, out), 300)
    assert codes == [0, 0], _logs(tmp_path)
    assert "[sft] resume: interrupted" in (tmp_path / "node0.log").read_text()
    _assert_same_weights(_weights(out), reference)


def test_several_machines_without_master_addr_is_an_error_before_any_work(tmp_path, monkeypatch):
    for var in ("MASTER_ADDR", "SLURM_JOB_NODELIST", "NODE_RANK", "SLURM_NODEID"):
        monkeypatch.delenv(var, raising=False)
    recipe = load(write_recipe(tmp_path, RECIPE))
    with pytest.raises(cluster.ClusterError, match="MASTER_ADDR is not set"):
        run(recipe, tmp_path / "run", echo=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_slurm_variables_give_the_node_rank_and_node_0s_address(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/sh\n[ \"$1 $2 $3\" = 'show hostnames gpu[07-08]' ] && printf 'gpu07\\ngpu08\\n'\n")
    (fake / "scontrol").chmod(0o755)
    for var in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "NNODES", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NUM_NODES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.setenv("SLURM_NNODES", "2")
    with pytest.raises(cluster.ClusterError, match="scontrol is not on PATH"):
        monkeypatch.setenv("PATH", "/nonexistent")
        cluster.master_addr()
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}/usr/bin:/bin")
    assert (cluster.node_rank(), cluster.master_addr(), cluster.coordinator_port()) == (1, "gpu07", 20000 + 123456 % 20000)
    cluster.check_environment(2)
    monkeypatch.setenv("SLURM_NNODES", "1")
    with pytest.raises(cluster.ClusterError, match="on 2 machines but this job has 1"):
        cluster.check_environment(2)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "16")
    monkeypatch.setenv("SLURM_STEP_NUM_NODES", "2")
    with pytest.raises(cluster.ClusterError, match="--ntasks-per-node=1"):
        cluster.node_rank()


def test_a_filesystem_without_posix_locks_is_named_as_such(tmp_path, monkeypatch):
    def no_locks(f, how):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    with pytest.raises(DataError, match="does not support POSIX locks") as info:
        RunStore(tmp_path / "run").lock()
    assert "in use" not in str(info.value)
