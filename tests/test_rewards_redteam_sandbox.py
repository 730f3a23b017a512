"""Red team, sandbox side (issue 25, classes 1, 3 and 7): programs scored one after another in one harness.

- Nothing a program does reaches the next: after each hostile writer, a fingerprint program sees exactly what
  the first program of a fresh harness saw (the sandbox folder's mode, owner, times, entries, xattrs and
  counters, the next inode number, the harness's state, sockets and IPC).
- No hostile program breaks the sandbox for an honest one after it, and a 0 the sandbox causes carries a label.
- Kernel memory past the limits: inodes, sockets, memfd, System V IPC, nested namespaces are bounded or refused,
  while honest temp files, pipes and big files work.
Each case is one short program; all run in the one harness this process keeps."""
import json
import os

import pytest

from posttrain.rewards import get_verifier, sandbox
from posttrain.rewards.sandbox import run_python, sandbox_kind

pytestmark = pytest.mark.skipif(sandbox_kind() != "bubblewrap" and not os.environ.get("CI"),
                                reason="bubblewrap is not usable here (rlimit fallback)")

FINGERPRINT = r"""
import ctypes, errno, json, os, socket, sys, time
st, vfs = os.stat('/sandbox'), os.statvfs('/sandbox')
def attempt(fn):
    try:
        return repr(fn())
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def probe_inode():
    with open('/sandbox/probe', 'w') as f:
        inode = os.fstat(f.fileno()).st_ino
    os.unlink('/sandbox/probe')
    return inode
def abstract():
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(b'\0posttrain-channel')
        return s.recv(16)
libc = ctypes.CDLL(None, use_errno=True)
def shm():
    found = libc.shmget(0x5eed, 0, 0)
    if found < 0:
        raise OSError(ctypes.get_errno(), 'shmget')
    return found
frame = sys._getframe()
while frame.f_back:
    frame = frame.f_back
now = time.time()
print(json.dumps({
    "mode": oct(st.st_mode), "owner": [st.st_uid, st.st_gid], "links": st.st_nlink, "entries": os.listdir('/sandbox'),
    "times_are_now": all(abs(now - t) < 60 for t in (st.st_mtime, st.st_atime, st.st_ctime)),
    "free": [vfs.f_bfree, vfs.f_ffree, vfs.f_files], "inode": attempt(probe_inode),
    "xattrs": attempt(lambda: os.listxattr('/sandbox')), "abstract_socket": attempt(abstract), "shm": attempt(shm),
    "outer_frame": sorted(k for k in frame.f_globals if k not in globals()),
    "previous_status": repr(frame.f_globals.get('status')), "cwd": os.getcwd(), "uid": os.getuid(),
    "fds": sorted(os.listdir('/proc/self/fd')),
}, sort_keys=True))
"""

# Each writer tries one channel to the next program (a GRPO group scored in one worker).
WRITERS = {
    "chmod_sticky": "import os; os.chmod('/sandbox', 0o1777)",
    "chmod_no_search": "import os; os.chmod('/sandbox', 0o644)",
    "chmod_read_only": "import os; os.chmod('/sandbox', 0o555)",
    "chmod_none": "import os; os.chmod('/sandbox', 0)",
    "times": "import os; os.utime('/sandbox', (1234, 1234))",
    "xattr": "import os; os.setxattr('/sandbox', 'user.channel', b'42')",
    "inode_counter": "import os\nfor i in range(300):\n    open(f'/sandbox/{i}', 'w').close()\n    os.unlink(f'/sandbox/{i}')",
    "kept_file_chmod": "import os; open('/sandbox/kept', 'w').write('42'); os.chmod('/sandbox/kept', 0); os.chmod('/sandbox', 0o500)",
    "full_folder": "open('/sandbox/big', 'wb').write(b'x' * (15 << 20))\nopen('/sandbox/big2', 'wb').write(b'x' * (15 << 20))",
    "abstract_socket": """
import socket, array
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(b'\\0posttrain-channel'); server.listen()
a, b = socket.socketpair()  # the listening socket in flight inside a cycle of sockets: it outlives the program
for s in (server, a, b):
    a.sendmsg([b'x'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [s.fileno()]))])
""",
    "sysv_shm": "import ctypes; ctypes.CDLL(None).shmget(0x5eed, 4096, 0o1666)",
    "exit_status": "import os; os._exit(42)",
    "signal_harness": "import os, signal\nfor sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):\n    os.kill(1, sig)",
    "umask_and_cwd": "import os; os.umask(0o777); os.chdir('/')",
}


@pytest.fixture(scope="module")
def first_program():
    """The fingerprint of the first program of a fresh harness, and that harness's process id."""
    sandbox._HARNESSES.close()
    result = run_python(FINGERPRINT)
    assert result.passed, result.reason
    harnesses = [h.proc.pid for h in sandbox._HARNESSES.idle]
    return json.loads(result.output), harnesses


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_the_next_program_starts_as_the_first_did(first_program, writer):
    fingerprint, harnesses = first_program
    run_python(WRITERS[writer])
    result = run_python(FINGERPRINT)
    assert result.passed, (writer, result.reason)
    assert json.loads(result.output) == fingerprint, writer
    assert [h.proc.pid for h in sandbox._HARNESSES.idle] == harnesses  # one harness ran them all


HUMANEVAL = {"id": "he", "prompt": "def f(n):\n    \"\"\"n squared plus one.\"\"\"\n", "entry_point": "f",
             "test": "def check(candidate):\n    assert candidate(3) == 10\n    assert candidate(-2) == 5\n"}
HONEST = ("import os, tempfile\ndef f(n):\n    with tempfile.NamedTemporaryFile('w+', dir='.') as t:\n"
          "        t.write(str(n * n + 1)); t.flush(); t.seek(0)\n        return int(t.read())\n")
BREAKERS = {name: f"{source}\ndef f(n):\n    return 0\n" for name, source in WRITERS.items()}
BREAKERS["fill_inodes"] = "import os\ntry:\n    for i in range(10 ** 6):\n        os.mkdir(f'/sandbox/{i}')\nexcept OSError:\n    pass\n"


@pytest.mark.parametrize("breaker", sorted(BREAKERS))
def test_an_honest_program_after_a_hostile_one_scores_what_it_scores_alone(breaker):
    verifier = get_verifier("code", timeout_s=2)
    assert verifier.verify_unguarded(BREAKERS[breaker], HUMANEVAL).score == 0.0
    honest = verifier.verify_unguarded(HONEST, HUMANEVAL)
    assert (honest.score, honest.failure) == (1.0, ""), (breaker, honest)


def test_a_zero_the_sandbox_causes_is_labelled(monkeypatch):
    """A sandbox that cannot start the program is no verdict on it: label `crash`, reason names the sandbox."""
    sandbox._HARNESSES.close()
    monkeypatch.setattr(sandbox, "SANDBOX_PYTHON", "/usr/bin/no-such-python")
    try:
        verdict = get_verifier("code", timeout_s=2).verify_unguarded(HONEST, HUMANEVAL)
    finally:
        sandbox._HARNESSES.close()
    assert (verdict.score, verdict.failure) == (0.0, "crash") and "sandbox" in verdict.reason, verdict


KERNEL_MEMORY = {  # each must be refused or stop at a bound, well below what it asks for
    "empty_files": "import os\nn = 0\ntry:\n    while n < 300000:\n        open(f'/sandbox/{n}', 'w').close(); n += 1\n"
                   "except OSError as e:\n    assert e.errno == 28, e\nassert n < 20000, n",
    "directories": "import os\nn = 0\ntry:\n    while n < 300000:\n        os.mkdir(f'/sandbox/{n}'); n += 1\n"
                   "except OSError as e:\n    assert e.errno == 28, e\nassert n < 20000, n",
    "symlinks": "import os\nn = 0\ntry:\n    while n < 300000:\n        os.symlink('x' * 4000, f'/sandbox/{n}'); n += 1\n"
                "except OSError as e:\n    assert e.errno == 28, e\nassert n < 20000, n",
    "unix_socket": "import socket\ntry:\n    socket.socket(socket.AF_UNIX); raise SystemExit('created')\nexcept PermissionError:\n    pass",
    "socketpair": "import socket\ntry:\n    socket.socketpair(); raise SystemExit('created')\nexcept PermissionError:\n    pass",
    "inet_socket": "import socket\ntry:\n    socket.socket(socket.AF_INET, socket.SOCK_DGRAM); raise SystemExit('created')\n"
                   "except PermissionError:\n    pass",
    "netlink_socket": "import socket\ntry:\n    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW); raise SystemExit('created')\n"
                      "except PermissionError:\n    pass",
    "memfd": "import os\ntry:\n    os.memfd_create('x'); raise SystemExit('created')\nexcept PermissionError:\n    pass",
    "sysv_shm": "import ctypes\nassert ctypes.CDLL(None).shmget(0, 1 << 30, 0o1600) == -1",
    "sysv_msg": "import ctypes\nassert ctypes.CDLL(None).msgget(0, 0o1600) == -1",
    "nested_user_namespace": "import ctypes\nassert ctypes.CDLL(None).unshare(0x10000000) == -1",
    "io_uring": "import ctypes\nassert ctypes.CDLL(None).syscall(425, 8, ctypes.create_string_buffer(120)) == -1",
    "pipes": "import os, fcntl\nn = 0\ntry:\n    while n < 100000:\n        r, w = os.pipe(); n += 1\n"
             "        try:\n            fcntl.fcntl(w, 1031, 1 << 20)\n        except OSError:\n            pass\n"
             "except OSError as e:\n    assert e.errno == 24, e\nassert n < 200, n",
}
HONEST_FILES = {
    "temp_files": "import os, tempfile\nd = tempfile.mkdtemp()\nfor i in range(2000):\n    open(os.path.join(d, str(i)), 'w').write('x')\n"
                  "assert len(os.listdir(d)) == 2000",
    "big_file": "open('big', 'wb').write(b'x' * (15 << 20))\nassert len(open('big', 'rb').read()) == 15 << 20",
    "pipe": "import os\nr, w = os.pipe(); os.write(w, b'ok'); assert os.read(r, 2) == b'ok'",
    "select_and_time": "import select, time\nt = time.monotonic(); select.select([], [], [], 0.01); assert time.monotonic() > t",
}


@pytest.mark.parametrize("name", sorted(KERNEL_MEMORY) + sorted(HONEST_FILES))
def test_kernel_memory_is_bounded_and_honest_files_work(name):
    result = run_python(KERNEL_MEMORY.get(name) or HONEST_FILES[name], timeout_s=10)
    assert result.passed, (name, result.reason)
