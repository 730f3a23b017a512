"""Run untrusted Python in a separate, locked-down process.

Each call gets:
- a fresh interpreter (`python -I -S -B`: no user site, no site-packages, no PYTHON* variables),
  so the code sees only the standard library;
- a clean environment (none of the caller's variables) and a new temporary working directory, removed
  afterwards;
- no network: a new network namespace (as root; else a new user+network namespace where the kernel
  allows it; else Python's socket module is disabled, which is weaker);
- when started as root, the `nobody` user (see `sandbox_identity`), so it can write nowhere but its
  directory and /tmp;
- rlimits: CPU seconds, address space, 16 MB file size, no core files, and RLIMIT_NPROC=1 so it cannot
  fork or start threads (a fork bomb fails at its first fork);
- a wall-clock timeout, after which its whole process group is killed.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("posttrain.rewards")
FILE_SIZE_LIMIT = 16 << 20
_CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

# Runs inside the child around the untrusted program. argv: program path, cpu seconds, memory bytes, uid;
# stdin: a one-time token, written to stdout only when the program ran to its end (so sys.exit(0) or
# os._exit(0) before the tests finish is a failure, not a pass).
_RUNNER = r"""
import ctypes, os, resource, sys
token = sys.stdin.readline().strip()
sys.stdin = open(os.devnull)
path, cpu_s, memory, uid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(path, encoding="utf-8") as f:
    source = f.read()
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
if libc.unshare(CLONE_NEWNET) != 0 and libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
    import socket
    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled in the sandbox")
    socket.socket = socket.create_connection = socket.socketpair = _no_network
if os.getuid() == 0 and uid >= 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
for which, value in ((resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, memory), (resource.RLIMIT_CORE, 0),
                     (resource.RLIMIT_FSIZE, %(fsize)d), (resource.RLIMIT_NPROC, 1)):
    resource.setrlimit(which, (value, value))
del ctypes, libc, f, path, cpu_s, memory, uid, which, value
sys.argv = ["program.py"]
try:
    exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit as e:
    sys.exit(f"SystemExit({e.code!r}) before the program's end")
sys.stdout.flush()
os.write(1, ("\n" + token + "\n").encode())
""" % {"fsize": FILE_SIZE_LIMIT}


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # the program exited with status 0 within its limits
    reason: str


def _runs_as(interpreter: str, uid: int) -> bool:
    try:
        probe = subprocess.run([interpreter, "-I", "-S", "-c", "import json, socket, re"], user=uid, group=uid,
                               extra_groups=[], env=_CLEAN_ENV, cwd="/", capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@functools.lru_cache(maxsize=1)
def sandbox_identity() -> tuple[str, int]:
    """(interpreter, uid to drop to or -1). As root, the program runs as `nobody`, with this interpreter
    if `nobody` can run it (its stdlib may sit under an unreadable /root, as with pyenv), else with a
    system python3 it can run; only when neither works does it keep the caller's user."""
    if os.getuid() != 0:
        return sys.executable, -1
    try:
        uid = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return sys.executable, -1
    for interpreter in (sys.executable, shutil.which("python3", path="/usr/bin:/bin")):
        if interpreter and _runs_as(interpreter, uid):
            return interpreter, uid
    log.warning("sandbox: no Python interpreter runs as 'nobody'; code runs as root (no fork limit)")
    return sys.executable, -1


def _last_error_line(stderr_path: Path) -> str:
    with open(stderr_path, "rb") as f:
        f.seek(max(0, stderr_path.stat().st_size - 4096))
        lines = f.read().decode("utf-8", errors="replace").strip().splitlines()
    return lines[-1][:200] if lines else "no error output"


def _describe_exit(code: int, stderr_path: Path) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return {"SIGXCPU": "CPU time limit exceeded", "SIGXFSZ": "file size limit exceeded"}.get(name, f"killed by {name}")
    return f"exit code {code}: {_last_error_line(stderr_path)}"


def run_python(source: str, *, timeout_s: float = 3.0, memory_mb: int = 1024) -> SandboxResult:
    """Run `source` as a program; passed when it exits 0 before `timeout_s` wall-clock seconds."""
    workdir = Path(tempfile.mkdtemp(prefix="posttrain-sandbox-"))
    try:
        program = workdir / "program.py"
        program.write_text(source, encoding="utf-8", errors="replace")
        interpreter, uid = sandbox_identity()
        if uid >= 0:
            os.chown(workdir, uid, uid)
        stderr_path, stdout_path = workdir / "stderr.txt", workdir / "stdout.txt"
        token = secrets.token_hex(16)
        with open(stderr_path, "wb") as stderr, open(stdout_path, "wb") as stdout:
            argv = [interpreter, "-I", "-S", "-B", "-c", _RUNNER, str(program),
                    str(math.ceil(timeout_s)), str(memory_mb << 20), str(uid)]
            proc = subprocess.Popen(argv, cwd=workdir, env={**_CLEAN_ENV, "HOME": str(workdir), "TMPDIR": str(workdir)},
                                    stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, start_new_session=True)
            try:
                proc.communicate(f"{token}\n".encode(), timeout=timeout_s)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return SandboxResult(False, f"timed out after {timeout_s:g}s")
        if code != 0:
            return SandboxResult(False, _describe_exit(code, stderr_path))
        if token.encode() not in stdout_path.read_bytes():
            return SandboxResult(False, "exit code 0 before the program's end (os._exit?)")
        return SandboxResult(True, "ran to the end, exit code 0")
    finally:
        shutil.rmtree(workdir, onerror=_make_writable_and_retry)


def _make_writable_and_retry(func, path, _exc_info) -> None:
    """rmtree's error hook: the program may have made a folder read-only; removal must still succeed."""
    os.chmod(os.path.dirname(path), 0o700)
    func(path)

