"""A training stage launched under accelerate with DeepSpeed ZeRO-2 (one CPU process here) trains the
same as in-process and is recorded by the parent, which writes the manifest. The user's saved accelerate
defaults and ACCELERATE_* variables (FSDP, fp16, dynamo) must not change what the recipe says. A worker
does not outlive its launcher or its `posttrain run` (tests/test_zero3.py kills a real launched stage)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from children import alive, kill_group, kill_process

from conftest import MINI_RECIPE
from posttrain.recipe import load
from posttrain.runner import run

LAUNCHED = "    launcher: {type: accelerate, num_processes: 1, deepspeed: zero2}\n"
HOSTILE_DEFAULTS = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
mixed_precision: fp16
num_processes: 2
gpu_ids: '0'
dynamo_config: {dynamo_backend: INDUCTOR}
fsdp_config: {fsdp_version: 2, fsdp_sharding_strategy: FULL_SHARD}
"""


@pytest.mark.slow  # 80 s: accelerate + DeepSpeed start-up; make test-all
def test_deepspeed_zero2_under_accelerate_matches_in_process(tmp_path, sft_file, monkeypatch):
    recipe = MINI_RECIPE.replace("SFT_DATA", str(sft_file))
    plain, launched = tmp_path / "plain.yaml", tmp_path / "launched.yaml"
    plain.write_text(recipe)
    launched.write_text(recipe + LAUNCHED)  # the sft stage is last in MINI_RECIPE
    run(load(plain), tmp_path / "a", echo=lambda m: None)
    # What a user's `accelerate config` leaves behind, and what a shell may export.
    (tmp_path / "hf" / "accelerate").mkdir(parents=True)
    (tmp_path / "hf" / "accelerate" / "default_config.yaml").write_text(HOSTILE_DEFAULTS)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    run(load(launched), tmp_path / "b", echo=lambda m: None)
    a, b = (json.loads((tmp_path / d / "sft" / "manifest.json").read_text()) for d in ("a", "b"))
    assert b["status"] == "complete" and (tmp_path / "b" / b["artifacts"]["model"] / "model.safetensors").exists()
    # The process group gets the launcher's default timeout (60 minutes), not gloo's 30 or NCCL's 10; the
    # trainer's Accelerator got DeepSpeed from the recipe and neither fp16 nor dynamo from the saved defaults.
    assert b["distributed"] == {"world_size": 1, "backend": "gloo", "timeout_s": 3600.0, "distributed_type": "DEEPSPEED",
                                "mixed_precision": "no", "dynamo": "NO"}, b["distributed"]
    assert b["metrics"]["global_step"] == a["metrics"]["global_step"] == 12
    assert abs(b["metrics"]["final_loss"] - a["metrics"]["final_loss"]) < 1e-3, (a["metrics"], b["metrics"])


# The process tree of a launched stage, as torchrun makes it: `posttrain run` -> launcher -> worker, the worker
# in a session of its own (so killing the run's process group does not reach it).
FAMILY = r"""
import os, subprocess, sys, time
role = sys.argv[1]
if role == "run":  # sets PARENT for the launcher's environment, as launch.start does
    from posttrain import launch
    subprocess.run([sys.executable, __file__, "launcher"], env={**os.environ, launch.PARENT: str(os.getpid())})
elif role == "launcher":
    subprocess.run([sys.executable, __file__, "worker"], start_new_session=True)
else:
    from posttrain.launch import exit_with_parents
    exit_with_parents()
    print(os.getppid(), os.getpid(), flush=True)
    time.sleep(600)  # a worker that would train for ten minutes more
"""


@pytest.mark.parametrize("victim", ["run", "launcher"])
def test_a_worker_dies_with_its_sigkilled_launcher_or_posttrain_run(tmp_path, victim):
    script = tmp_path / "family.py"
    script.write_text(FAMILY)
    run = subprocess.Popen([sys.executable, str(script), "run"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    launcher = worker = None
    try:
        launcher, worker = map(int, run.stdout.readline().split())  # the worker's guard is in place
        os.kill(run.pid if victim == "run" else launcher, signal.SIGKILL)  # that process alone, not its group
        deadline = time.monotonic() + 15
        while (alive(worker) or alive(launcher)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(worker), f"worker {worker} outlived the SIGKILLed {victim}"
        assert not alive(launcher), f"launcher {launcher} outlived its worker"
    finally:
        kill_group(run.pid)
        for pid in (launcher, worker):
            if pid:
                kill_process(pid)
        run.wait()
