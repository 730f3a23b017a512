"""Verifier worker processes never outlive the process that started them, even one killed by SIGKILL."""
import os
import signal
import subprocess
import sys
import time

from children import run_with_deadline

CHILD = """
import time
from posttrain.rewards import score_rows
score_rows(["The answer is 4."], [{"ground_truth": "4"}], "numeric")
print("ready", flush=True)
time.sleep(120)
"""


def test_workers_exit_when_their_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert parent.stdout.readline().strip() == "ready"
    workers = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "expected at least one verifier worker"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while any(os.path.exists(f"/proc/{w}") for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not [w for w in workers if os.path.exists(f"/proc/{w}")]


FORKS = """
import os
from posttrain.rewards import score_rows
print(score_rows(["The answer is 4."], [{"ground_truth": "4"}], "numeric")[0].score, flush=True)  # the parent's workers
pid = os.fork()
if pid == 0:  # the child inherits the parent's worker objects; it must fork and use workers of its own
    rewards = score_rows(["The answer is 5.", "The answer is 4."], [{"ground_truth": "4"}] * 2, "numeric")
    print([v.score for v in rewards], flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print(score_rows(["The answer is 4."], [{"ground_truth": "4"}], "numeric")[0].score, flush=True)  # the parent's still work
"""


def test_a_forked_child_scores_with_workers_of_its_own():
    out = run_with_deadline([sys.executable, "-c", FORKS], timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    first, child, last = out.stdout.split("\n")[:3]
    assert first == last == "1.0" and child == "[0.0, 1.0]", out.stdout
