"""Several machines, one run folder, one owner.

Every machine runs the same `posttrain run`. Node 0 is the coordinator: it alone locks, plans, writes and runs
the stages that have no launcher. It hosts a small TCP store (torch's TCPStore at MASTER_ADDR:MASTER_PORT)
through which every other node first proves it runs the same recipe, overrides and data, and then receives
each multi-machine training stage's job, which it only joins with its workers. Where the node's rank and node 0's
address come from: NODE_RANK / MASTER_ADDR / MASTER_PORT, else Slurm's SLURM_NODEID and SLURM_JOB_NODELIST.
"""
import os
import pickle
import shutil
import socket
import subprocess
import threading
import time
from datetime import timedelta

HEARTBEAT_S = 1.0  # how often a following node says it is alive
GONE_AFTER_S = 5.0  # node 0 stops waiting for a node it has not heard from for this long (killed, or failed)


class ClusterError(Exception):
    """A multi-node setting is missing or the nodes disagree (exit code 2: nothing ran)."""


def node_rank() -> int:
    """This machine's rank: NODE_RANK, else Slurm's SLURM_NODEID, else 0 (one machine)."""
    steps_tasks, step_nodes = os.environ.get("SLURM_STEP_NUM_TASKS"), os.environ.get("SLURM_STEP_NUM_NODES")
    if steps_tasks and step_nodes and int(steps_tasks) > int(step_nodes):
        raise ClusterError(f"srun started {steps_tasks} tasks on {step_nodes} node(s): start one `posttrain run` per node "
                           "(srun --ntasks-per-node=1); the launcher starts the per-GPU processes itself")
    for var in ("NODE_RANK", "SLURM_NODEID"):
        if os.environ.get(var, "").strip():
            try:
                return int(os.environ[var])
            except ValueError:
                raise ClusterError(f"{var}={os.environ[var]!r} is not a node number") from None
    return 0


def nodes_needed(recipe) -> int:
    """The most machines any stage of the recipe is launched on."""
    return max([1] + [launcher.num_machines for launcher in _launchers(recipe)])


def store_timeout(recipe) -> timedelta:
    """How long nodes wait for each other to start: the longest launcher timeout in the recipe."""
    return timedelta(minutes=max([30] + [launcher.timeout_minutes for launcher in _launchers(recipe)]))


def _launchers(recipe):
    for spec in recipe.stages.values():
        launcher = getattr(spec.config, "launcher", None)
        if launcher is not None and launcher.type != "none":
            yield launcher


def check_environment(nodes: int) -> None:
    """Before any work: several machines need node 0's address, and as many machines as the recipe uses."""
    if nodes <= 1:
        return
    master_addr()
    stated = os.environ.get("NNODES") or os.environ.get("SLURM_STEP_NUM_NODES") or os.environ.get("SLURM_NNODES")
    if stated and stated.isdigit() and int(stated) < nodes:
        raise ClusterError(f"the recipe launches a stage on {nodes} machines but this job has {stated}; "
                           "give the job more nodes or lower launcher.num_machines")


def master_addr() -> str:
    """Node 0's address: MASTER_ADDR, else the first host of Slurm's SLURM_JOB_NODELIST."""
    if os.environ.get("MASTER_ADDR"):
        return os.environ["MASTER_ADDR"]
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise ClusterError("a stage runs on several machines but MASTER_ADDR is not set: set it to node 0's address, "
                           "reachable from every node (under Slurm it comes from SLURM_JOB_NODELIST)")
    if shutil.which("scontrol") is None:
        raise ClusterError(f"SLURM_JOB_NODELIST={nodelist} needs `scontrol show hostnames` to find node 0, and "
                           "scontrol is not on PATH here: set MASTER_ADDR to node 0's address")
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                           timeout=60).stdout.split()
    if not hosts:
        raise ClusterError(f"`scontrol show hostnames {nodelist}` named no host: set MASTER_ADDR to node 0's address")
    return hosts[0]


def coordinator_port() -> int:
    """MASTER_PORT, else one derived from the Slurm job id (two jobs sharing a node do not collide), else 29500."""
    if os.environ.get("MASTER_PORT"):
        return int(os.environ["MASTER_PORT"])
    job = os.environ.get("SLURM_JOB_ID", "")
    return 20000 + int(job) % 20000 if job.isdigit() else 29500


def free_port() -> int:
    """A TCP port free on this machine now, for one launch's rendezvous (node 0 picks it and tells the others)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class Coordinator:
    """Node 0's side: check every node's run fingerprint, then publish launched stages in order."""

    def __init__(self, nodes: int, fingerprint: str, timeout: timedelta):
        from torch.distributed import TCPStore

        self.nodes, self.seq = nodes, 0
        where = f"{master_addr()}:{coordinator_port()}"
        try:
            self.store = TCPStore(master_addr(), coordinator_port(), None, True, timeout, wait_for_workers=False)
            theirs = {n: self.store.get(f"node/{n}").decode() for n in range(1, nodes)}
        except RuntimeError as e:  # torch's DistError: the port is taken, or a node never came
            raise ClusterError(f"node 0: coordinating {nodes} nodes at {where} failed ({str(e).splitlines()[0]}); "
                               f"start every node within {timeout} with the same command, on a free MASTER_PORT") from None
        wrong = {n: fp for n, fp in theirs.items() if fp != fingerprint}
        verdict = "ok" if not wrong else (
            f"node(s) {', '.join(map(str, wrong))} run a different recipe, overrides or data than node 0 "
            f"(run fingerprint {fingerprint} on node 0, {', '.join(wrong.values())} there): start every node "
            "with the same command and the same files")
        self.store.set("verdict", verdict)
        if wrong:
            self._wait_acks("verdict")
            raise ClusterError(verdict)

    def publish(self, message: dict) -> None:
        self.store.set(f"step/{self.seq}", pickle.dumps(message))
        self.seq += 1

    def finish(self, error: str | None) -> None:
        """Tell the others the run is over, and wait (briefly) until they heard it before the store goes away."""
        self.publish({"end": error})
        self._wait_acks(f"step/{self.seq - 1}")

    def _wait_acks(self, key: str, seconds: float = 60) -> None:
        """Until every node has heard `key` or is gone (no heartbeat for GONE_AFTER_S), at most `seconds`."""
        deadline, waiting = time.time() + seconds, set(range(1, self.nodes))
        heard = {n: (self.store.add(f"alive/{n}", 0), time.time()) for n in waiting}  # (beats, when they last moved)
        while waiting and time.time() < deadline:
            for n in sorted(waiting):
                beats = self.store.add(f"alive/{n}", 0)
                if beats != heard[n][0]:
                    heard[n] = (beats, time.time())
                if self.store.check([f"ack/{key}/{n}"]) or time.time() - heard[n][1] > GONE_AFTER_S:
                    waiting.discard(n)
            time.sleep(0.2)


class Follower:
    """A non-zero node's side: prove the fingerprint, then receive node 0's messages one by one."""

    def __init__(self, rank: int, fingerprint: str, timeout: timedelta):
        from torch.distributed import TCPStore

        self.rank, self.seq = rank, 0
        try:
            self.store = TCPStore(master_addr(), coordinator_port(), None, False, timeout)
            self.store.set(f"node/{rank}", fingerprint)
            verdict = self.store.get("verdict").decode()
            self._ack("verdict")
        except RuntimeError as e:  # torch's DistError: no node 0 within the timeout, or it went away
            raise ClusterError(f"node {rank}: no coordinator (node 0) at {master_addr()}:{coordinator_port()} "
                               f"({str(e).splitlines()[0]}); start node 0 with the same command") from None
        if verdict != "ok":
            raise ClusterError(f"node {rank}: {verdict}")
        threading.Thread(target=self._beat, args=(timeout,), name="posttrain-heartbeat", daemon=True).start()

    def _ack(self, key: str) -> None:
        self.store.set(f"ack/{key}/{self.rank}", "1")

    def _beat(self, timeout: timedelta) -> None:
        """Say this node is alive, every HEARTBEAT_S, until the process ends: node 0 then knows a killed node
        from one still busy. A connection of its own, as the main one may be waiting in next()."""
        from torch.distributed import TCPStore

        try:
            store = TCPStore(master_addr(), coordinator_port(), None, False, timeout)
            while True:
                store.add(f"alive/{self.rank}", 1)
                time.sleep(HEARTBEAT_S)
        except RuntimeError:  # node 0 is gone; next() says so
            return

    def next(self) -> dict:
        """The next message; waits as long as node 0 is alive (its other stages may take hours)."""
        from torch.distributed import DistStoreError

        key = f"step/{self.seq}"
        while True:
            try:
                self.store.wait([key], timedelta(seconds=60))
                message = pickle.loads(self.store.get(key))
                break
            except DistStoreError:  # a timeout of this wait only: node 0 is still busy
                continue
            except RuntimeError as e:
                raise ClusterError(f"lost node 0 ({str(e).splitlines()[0]})") from None
        self._ack(key)
        self.seq += 1
        return message
