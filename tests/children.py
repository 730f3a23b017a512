"""Processes the tests start: every one runs under a deadline and in a process group of its own, so that on
expiry the whole group is killed and the test fails with the child's output instead of waiting forever; and
at the end of the suite none is left alive and no run-folder lock is held (conftest checks both).

A process counts as the suite's when it descends from the pytest process, or carries the session's marker:
the environment variable MARKER (an exec'd child, even one that left the process tree with setsid) or an
open file descriptor on the marker file (a child forked from pytest, whose /proc environ is pytest's own)."""
import os
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

MARKER = "POSTTRAIN_TEST_SESSION"
TAIL = 3000


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def kill_process(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def fail_past_deadline(what: str, timeout: float, output: str) -> None:
    pytest.fail(f"{what} ran past its {timeout:g} s deadline; its process group was killed. "
                f"The end of its output:\n{output[-TAIL:]}", pytrace=False)


def run_with_deadline(cmd: list, timeout: float, log: Path | None = None, **popen_kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True) in a new session. On expiry the child's whole
    process group is killed (subprocess.run would kill only the child, and a grandchild holding the pipe
    would block it forever) and the test fails with the output's tail. After a normal exit the group is
    killed too: whatever the child left running in it goes with it. `log`: a file the child writes its
    output to instead, shown on expiry."""
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **popen_kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as e:  # the deadline, or pytest-timeout interrupting the wait: the group goes
        if not isinstance(e, subprocess.TimeoutExpired):
            kill_group(proc.pid)
            raise
        kill_group(proc.pid)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # a process outside the group holds the pipe: conftest will find it
            proc.kill()
            out, err = "", "(the output pipe stayed open after the group was killed)"
        logged = log.read_text() if log and log.exists() else ""
        fail_past_deadline(f"`{' '.join(map(str, cmd))[:200]}`", timeout, (out or "") + (err or "") + logged)
    kill_group(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class Session:
    """The marker of one pytest session: set in the environment children inherit, and held open as a file."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        os.environ[MARKER] = self.token
        fd, self.path = tempfile.mkstemp(prefix=f"posttrain-test-{self.token}-")
        os.set_inheritable(fd, True)  # forks keep it anyway; exec'd children have the environment
        self.fd = fd

    def _marked(self, pid: int) -> bool:
        try:
            if f"{MARKER}={self.token}\0".encode() in Path(f"/proc/{pid}/environ").read_bytes():
                return True
            return any(os.readlink(f"/proc/{pid}/fd/{fd}") == self.path for fd in os.listdir(f"/proc/{pid}/fd"))
        except OSError:  # gone, or not ours to read
            return False

    def processes(self) -> dict[int, str]:
        """pid -> command line of every live process of this session except pytest itself."""
        parents, me = {}, os.getpid()
        for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                if alive(pid):
                    parents[pid] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                continue

        def descends(pid: int) -> bool:
            while pid > 1:
                pid = parents.get(pid, 0)
                if pid == me:
                    return True
            return False

        found = {}
        for pid in parents:
            if pid != me and (descends(pid) or self._marked(pid)):
                try:
                    found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
                except OSError:
                    continue
        return found

    def close(self) -> None:
        os.close(self.fd)
        os.unlink(self.path)


def held_locks(root: Path) -> dict[str, int]:
    """Run-folder `.lock` files under `root` that some process holds a lock on (from /proc/locks): path -> pid."""
    by_inode = {}
    for path in root.rglob(".lock"):
        st = path.stat()
        by_inode[f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"] = str(path)
    held = {}
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "->" in parts:  # a waiter, listed under the lock it waits for
            parts.remove("->")
        if len(parts) >= 6 and parts[5] in by_inode:
            held[by_inode[parts[5]]] = int(parts[4])
    return held
