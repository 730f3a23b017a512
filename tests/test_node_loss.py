"""A node of a multi-machine run killed outright (SIGKILL, as a machine dies): it leaves no file behind, and
node 0 neither waits for it long nor gives up on a node that is alive but busy. Each node is a real process
here, talking over torch's TCPStore on 127.0.0.1; no stage trains (tests/test_cluster.py runs whole stages)."""
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

from posttrain import cluster

# Node 1: joins node 0's store (and so starts its heartbeat), says so, then idles until killed.
FOLLOWER = """
import time
from datetime import timedelta
from posttrain import cluster
cluster.Follower(1, "same", timedelta(seconds=60))
print("joined", flush=True)
time.sleep(600)
"""

# A follower that gets one stage's job, and whose `posttrain run` is killed while the launcher runs: the
# launcher (here a stand-in for accelerate) reads the job and the accelerate config by the paths it is given.
KILLED_MID_STAGE = """
import os, pickle, signal, subprocess, sys, yaml
from types import SimpleNamespace
from posttrain import launch

launcher = SimpleNamespace(type="accelerate", num_processes=1, num_machines=2)
job = pickle.dumps({"config": SimpleNamespace(launcher=launcher)})

def launched(cmd, env):
    config = yaml.safe_load(open(cmd[cmd.index("--config_file") + 1]))
    print("job", open(cmd[-1], "rb").read() == job, "machine_rank", config["machine_rank"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

class Node0:
    def next(self):
        return {"stage": "sft", "job": job, "addr": "127.0.0.1", "port": 1, "machines": 2}

subprocess.run = launched
launch.follow(Node0(), 1, echo=lambda m: None)
"""


def test_a_node_killed_mid_stage_leaves_no_job_or_launch_folder_behind(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_STAGE], env={**os.environ, "TMPDIR": str(tmp)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "job True machine_rank 1" in proc.stdout  # the launcher read both, whole
    assert not list(tmp.iterdir())


def test_node_0_waits_for_a_busy_node_but_not_for_a_killed_one(monkeypatch):
    monkeypatch.setattr(cluster, "GONE_AFTER_S", 2.0)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(cluster.free_port()))
    node1 = subprocess.Popen([sys.executable, "-c", FOLLOWER], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        coordinator = cluster.Coordinator(2, "same", timedelta(seconds=120))
        assert node1.stdout.readline().strip() == "joined"
        start = time.monotonic()
        coordinator._wait_acks("a message node 1 does not read", seconds=4)  # alive (heartbeat): waited for
        assert time.monotonic() - start >= 4
        os.killpg(node1.pid, signal.SIGKILL)
        node1.wait()
        start = time.monotonic()
        coordinator.finish("stage 'sft' failed")  # at most 60 s for a node that is alive; a dead one is seen as such
        assert time.monotonic() - start < cluster.GONE_AFTER_S + 2
    finally:
        if node1.poll() is None:
            os.killpg(node1.pid, signal.SIGKILL)
        node1.wait()
