"""The suite's own hygiene (children.py): a child past its deadline fails the test with its output and takes
its whole process group with it; the end-of-suite check finds what tests leave behind, forked or setsid'd."""
import fcntl
import os
import subprocess
import sys
import time

import pytest

from children import alive, held_locks, kill_process, run_with_deadline
from conftest import SESSION


def wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_a_child_past_its_deadline_is_killed_with_its_group_and_fails_the_test(tmp_path):
    pid_file = tmp_path / "grandchild"
    script = f"sleep 1000 & echo $! > {pid_file}; echo started; wait"
    with pytest.raises(pytest.fail.Exception, match="(?s)1 s deadline.*started"):
        run_with_deadline(["sh", "-c", script], timeout=1)
    assert wait_gone(int(pid_file.read_text())), "the grandchild outlived the deadline"


def orphan_forked_from_here() -> int:
    """The issue's leftover: forked from pytest (so /proc shows pytest's environment, without the marker),
    then setsid and a second fork, so it is no descendant either. Only lock-free calls run after the fork."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            time.sleep(1000)
        os._exit(0)
    os.waitpid(middle, 0)
    os.close(w)
    pid = int(os.read(r, 20))
    os.close(r)
    return pid


def test_an_exec_d_setsid_child_and_an_orphan_forked_from_pytest_are_found_as_leftovers():
    exec_d = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    orphan = orphan_forked_from_here()
    try:
        found = SESSION.processes()
        assert exec_d.pid in found and orphan in found, found
    finally:
        kill_process(exec_d.pid)
        kill_process(orphan)
        exec_d.wait()
    assert wait_gone(orphan) and exec_d.pid not in SESSION.processes()


def test_a_held_run_lock_is_found(tmp_path):
    lock = tmp_path / "run" / ".lock"
    lock.parent.mkdir()
    lock.touch()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.lockf(f, fcntl.LOCK_EX); print(flush=True); time.sleep(1000)", str(lock)],
                              stdout=subprocess.PIPE, start_new_session=True)
    try:
        holder.stdout.readline()
        assert held_locks(tmp_path) == {str(lock): holder.pid}
    finally:
        kill_process(holder.pid)
        holder.wait()
    assert held_locks(tmp_path) == {}
    with open(lock) as f:  # and a lock held by this very process
        fcntl.lockf(f, fcntl.LOCK_SH)
        assert held_locks(tmp_path) == {str(lock): os.getpid()}
