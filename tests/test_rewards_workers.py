"""Verifier worker processes never outlive the process that started them, even one killed by SIGKILL."""
import os
import signal
import subprocess
import sys
import time

CHILD = """
import time
from posttrain.rewards import score_rows
score_rows(["The answer is 4."], [{"ground_truth": "4"}], "numeric")
print("ready", flush=True)
time.sleep(120)
"""


def test_workers_exit_when_their_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().strip() == "ready"
    workers = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "expected at least one verifier worker"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while any(os.path.exists(f"/proc/{w}") for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not [w for w in workers if os.path.exists(f"/proc/{w}")]
