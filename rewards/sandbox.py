"""Run untrusted Python in a separate, locked-down process.

The sandbox is bubblewrap (`bwrap`, Debian's `bubblewrap` package) when it works here (`sandbox_kind()` says
"bubblewrap"). A process starts it once: it runs a trusted harness (harness.py) that starts a fresh
interpreter per program, so a program costs a fork and an interpreter start, not a bubblewrap start. The
program runs in new PID, network, UTS, cgroup, user and mount namespaces, an IPC namespace of its own, as
`nobody`, with no capabilities, and sees:
- a read-only root holding only /usr (the system Python's standard library; no site-packages) and the
  /dev/null, zero, random and urandom devices: no host /tmp, /dev/shm, /run, /home, /root, project or
  data files, so no Unix sockets of the host;
- a private /proc that shows only the harness (PID 1) and itself;
- a network namespace with no interface but a down loopback (and it may not create sockets at all);
- one writable folder, /sandbox (its cwd, HOME and TMPDIR): a new tmpfs of SANDBOX_BYTES and SANDBOX_INODES
  mounted for this program alone, gone when it ends.
The guarantees, and the tests of each, are listed in docs/rewards.md.

Without bubblewrap ("rlimit", weaker: logged once and reported by RLVR) the program runs in a fresh empty
host temporary folder, removed afterwards, as `nobody` when started as root, in a new network namespace
where the kernel allows one; it can still read world-readable host files and see other processes in /proc.

Both: a fresh `python -I -S -B` (no site-packages, no PYTHON* variables), an empty environment, seccomp.py's
filter (no sockets, new namespaces, memfd or System V memory), rlimits (CPU seconds, address space, 16 MB per
file, 256 descriptors, no core files, RLIMIT_NPROC=1 so no fork or thread), and a backstop for a program that
waits without using CPU (remote.Session; the rlimit fallback kills its process group).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from posttrain.rewards.harness import Pool, Program
from posttrain.rewards.seccomp import INSTALL, filter_bytes

log = logging.getLogger("posttrain.rewards")
FILE_SIZE_LIMIT = 16 << 20
SANDBOX_BYTES = 64 << 20
SANDBOX_INODES = 8192  # files, folders and links in /sandbox: each costs kernel memory outside SANDBOX_BYTES
OPEN_FILES = 256  # descriptors: bounds the pipes (and their buffers) a program can hold
_CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
_DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
SANDBOX_PYTHON = "/usr/bin/python3"  # the system interpreter: its standard library is under /usr
_HARNESSES = Pool()

# The fallback's program runs these first (the harness sets the same limits in the child before its exec).
_LIMITS = "import resource as _r\nfor _w, _s, _h in %r:\n    _r.setrlimit(_w, (_s, _h))\ndel _r, _w, _s, _h\n"
_FALLBACK_ISOLATION = INSTALL + """
import ctypes as _c, os as _os
_libc = _c.CDLL(None, use_errno=True)
_libc.unshare(0x40000000) == 0 or _libc.unshare(0x10000000 | 0x40000000)  # a network namespace where allowed
if _os.getuid() == 0 and %(uid)d >= 0:
    _os.setgroups([]); _os.setgid(%(uid)d); _os.setuid(%(uid)d)
if not install_filter(_libc, bytes.fromhex(%(filter)r)):
    raise SystemExit("sandbox: seccomp failed")
del _c, _os, _libc, install_filter
"""


def _nobody() -> int:
    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return -1


def _bwrap_argv() -> list[str]:
    argv = ["bwrap", "--unshare-all", "--as-pid-1", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--cap-add", "CAP_SYS_ADMIN", "--clearenv",  # the harness's, to mount each program's /sandbox; children drop it
            "--ro-bind", "/usr", "/usr"]
    for top in ("/lib", "/lib64", "/bin"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for device in _DEVICES:
        argv += ["--dev-bind", device, device]
    for key, value in {**_CLEAN_ENV, "HOME": "/sandbox", "TMPDIR": "/sandbox"}.items():
        argv += ["--setenv", key, value]
    return argv + ["--proc", "/proc", "--dir", "/sandbox", "--remount-ro", "/", "--chdir", "/", SANDBOX_PYTHON]


def _harness_setup() -> dict:
    """What the harness gives each program: the interpreter, the mount options of its /sandbox, the filter."""
    return {"python": SANDBOX_PYTHON, "tmpfs": f"size={SANDBOX_BYTES},nr_inodes={SANDBOX_INODES},mode=0700",
            "filter": filter_bytes().hex()}


def _probe(argv: list[str], **kwargs) -> bool:
    try:
        return subprocess.run(argv + ["-I", "-S", "-c", "import json, socket, re"], env=_CLEAN_ENV, cwd="/",
                              capture_output=True, timeout=30, **kwargs).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _as_nobody() -> dict:
    uid = _nobody()
    return {"user": uid, "group": uid, "extra_groups": []} if os.getuid() == 0 and uid >= 0 else {}


def _bwrap_launch() -> tuple[list[str], dict]:
    """(argv, Popen keywords) that start bubblewrap as `nobody` when we are root. util-linux's `setpriv` drops
    the user when it is there: Popen can then vfork, where its own user= must fork, which costs several
    milliseconds per program from a large parent such as a verifier worker."""
    uid, setpriv = _nobody(), shutil.which("setpriv")
    if os.getuid() == 0 and uid >= 0 and setpriv:
        return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] + _bwrap_argv(), {}
    return _bwrap_argv(), _as_nobody()


@functools.lru_cache(maxsize=1)
def sandbox_kind() -> str:
    """"bubblewrap", or "rlimit" (the weaker fallback) when bwrap is missing or cannot create namespaces."""
    if shutil.which("bwrap") and os.path.exists(SANDBOX_PYTHON) and _harness_works():
        return "bubblewrap"
    log.warning("sandbox: bubblewrap is not usable here (apt-get install bubblewrap); untrusted code runs in "
                "the weaker rlimit-only sandbox")
    return "rlimit"


def _harness_works() -> bool:
    """Whether a program runs in the harness (bubblewrap starts, the child gets its own namespaces)."""
    try:
        with _in_harness("import json, socket, re", [], (), None) as proc:
            return proc.wait(timeout=30) == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.lru_cache(maxsize=1)
def fallback_identity() -> tuple[str, int]:
    """(interpreter, uid to drop to or -1) for the rlimit sandbox: as root, `nobody` with an interpreter it
    can run (pyenv's stdlib may sit under an unreadable /root), else the caller's user."""
    uid = _nobody()
    if os.getuid() != 0 or uid < 0:
        return sys.executable, -1
    for interpreter in (sys.executable, shutil.which("python3", path="/usr/bin:/bin")):
        if interpreter and _probe([interpreter], **_as_nobody()):
            return interpreter, uid
    log.warning("sandbox: no Python interpreter runs as 'nobody'; code runs as root (no fork limit)")
    return sys.executable, -1


@contextlib.contextmanager
def sandboxed(source: str, args: list[str], *, cpu_s: float, memory_mb: int, pass_fds: tuple = (), stderr=None,
              stdout=None):
    """A Popen-like handle (wait, kill, returncode) of `python -c source args` in the sandbox: under
    bubblewrap a child of this process's harness (harness.py), else a Popen; killed and cleaned on exit."""
    cpu = math.ceil(cpu_s)
    limits = [(resource.RLIMIT_CPU, cpu, cpu + 1)]  # SIGXCPU first, SIGKILL a second later
    for which, value in ((resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT), (resource.RLIMIT_NPROC, 1), (resource.RLIMIT_NOFILE, OPEN_FILES)):
        limits.append((which, value, value))
    if sandbox_kind() == "bubblewrap":
        with _in_harness(source, args, pass_fds, stderr, stdout, limits) as proc:
            yield proc
    else:
        with _in_fallback(_LIMITS % (limits,) + source, args, pass_fds, stderr, stdout) as proc:
            yield proc


@contextlib.contextmanager
def _in_harness(source: str, args: list[str], pass_fds: tuple, stderr, stdout=None, limits: list = ()):
    argv, user = _bwrap_launch()
    harness = _HARNESSES.take(argv, _CLEAN_ENV, user, _harness_setup())
    fds, targets = list(pass_fds), list(pass_fds)
    for stream, target in ((stderr, 2), (stdout, 1)):
        if stream is not None:
            fds, targets = [stream.fileno(), *fds], [target, *targets]
    proc = harness.start(source, args, fds, targets, list(limits))
    try:
        yield proc
    finally:
        proc.kill()
        _HARNESSES.give(harness)


@contextlib.contextmanager
def _in_fallback(source: str, args: list[str], pass_fds: tuple, stderr, stdout=None):
    interpreter, uid = fallback_identity()
    workdir = tempfile.mkdtemp(prefix="posttrain-sandbox-")
    if uid >= 0:
        os.chown(workdir, uid, uid)
    proc = subprocess.Popen([interpreter, "-I", "-S", "-B", "-c", _FALLBACK_ISOLATION % {"uid": uid, "filter": filter_bytes().hex()} + source, *args],
                            cwd=workdir, env={**_CLEAN_ENV, "HOME": workdir, "TMPDIR": workdir},
                            stdin=subprocess.DEVNULL, stdout=stdout or subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL,
                            pass_fds=pass_fds, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(workdir, onerror=_make_writable_and_retry)


def _make_writable_and_retry(func, path, _exc_info) -> None:
    """rmtree's error hook: the program may have made a folder read-only; removal must still succeed."""
    os.chmod(os.path.dirname(path), 0o700)
    func(path)


def busy_seconds(proc) -> float | None:
    """Seconds the sandboxed program has run or waited for a CPU (the kernel's schedstat), None once it has ended
    or where the kernel does not say. The rest of its wall-clock time it was blocked, which load does not change."""
    pid = proc.host_pid() if isinstance(proc, Program) else proc.pid
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            on_cpu, waiting = f.read().split()[:2]
        return (int(on_cpu) + int(waiting)) / 1e9
    except (OSError, ValueError, TypeError):
        return None


def describe_exit(code: int | None, stderr_tail: str) -> str:
    if code is None:
        return "still running"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return {"SIGXCPU": "CPU time limit exceeded", "SIGXFSZ": "file size limit exceeded"}.get(name, f"killed by {name}")
    return f"exit code {code}: {stderr_tail or 'no error output'}"


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # exited 0 within its limits; says nothing about correctness (see code_exec for verdicts)
    reason: str
    output: str = ""  # the start of what it printed (stdout), up to run_python's max_output bytes


def run_python(source: str, *, timeout_s: float = 3.0, memory_mb: int = 1024, wall_s: float | None = None,
               max_output: int = 4096) -> SandboxResult:
    """Run `source` as a program in the sandbox with `timeout_s` CPU seconds (wall backstop `wall_s`,
    default 3 x timeout_s + 2). Used to test the sandbox itself and by the policy's Python tool
    (posttrain.stages.rlvr.tools); verdicts go through remote.Session."""
    with tempfile.TemporaryFile() as stderr, tempfile.TemporaryFile() as stdout:
        with sandboxed(source, [], cpu_s=timeout_s, memory_mb=memory_mb, stderr=stderr, stdout=stdout) as proc:
            try:
                code = proc.wait(timeout=wall_s or 3 * timeout_s + 2)
            except subprocess.TimeoutExpired:
                return SandboxResult(False, f"timed out after {wall_s or 3 * timeout_s + 2:g}s of wall-clock time")
        stderr.seek(0)
        tail = stderr.read()[-4096:].decode("utf-8", errors="replace").strip().splitlines()
        stdout.seek(0)
        output = stdout.read(max_output).decode("utf-8", errors="replace")
    reason = "exit code 0" if code == 0 else describe_exit(code, tail[-1][:200] if tail else "")
    return SandboxResult(code == 0, reason, output)
