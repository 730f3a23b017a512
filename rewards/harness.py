"""A pre-started bubblewrap sandbox: a trusted harness, started once per process, forks a fresh child per program.

Starting bubblewrap and an interpreter for every program cost ~1.65x a bare `python3 -I -S` start (issue 12
asks <= 1.5x). So each process starts one bubblewrap sandbox (sandbox.py's namespaces, mounts and user) running
HARNESS below as its PID 1, and each program runs in a child the harness forks. Why this is as sound as a
fresh sandbox per program:
- The verdict is still decided in the trusted process (code_exec.py); the harness only runs programs. It
  holds nothing a program could use: no tests, no expected values, no secrets. Each child closes the
  harness's control socket and every descriptor but its own pipes before it runs the program.
- A program cannot reach the harness: the harness is PID 1 of the sandbox's PID namespace, so the kernel
  drops every signal (SIGKILL included) sent to it from inside, as all its signals are left at their default;
  it is not dumpable, so programs cannot ptrace it or read its memory through /proc; and programs cannot
  fork (RLIMIT_NPROC=1), so no process outlives the child the harness kills.
- Each child unshares a new user and IPC namespace and drops every capability before the program runs:
  System V and POSIX IPC objects and keyrings it creates live in those namespaces and die with it.
- Each program sees a fresh, empty /sandbox (the sandbox's size-limited tmpfs): after a child exits (or is
  killed at the caller's request) the harness empties /sandbox before it reports; if anything is left, the
  harness says so and exits, and the next program gets a newly started sandbox.
- What isolates a program from the host is unchanged: the mounts, namespaces and user of sandbox.py.
Every child gets a fresh `__main__`, `sys.argv` as `python -c` would set it, its stdin and stdout on
/dev/null, and the CPU, memory, file and process limits of sandbox._LIMITS, set by the program's first
lines as before; its exit code is reported as Popen's returncode (negative: killed by that signal).
"""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import threading

from posttrain.rewards.guard import STOP_HOOKS

CHUNK = 1 << 16  # source bytes per control message (a SOCK_SEQPACKET message must fit the socket buffer)

# Trusted code, run as PID 1 inside bubblewrap as `python -I -S -B -c HARNESS control_fd`.
HARNESS = r'''
import atexit, ctypes, fcntl, json, os, select, shutil, signal, socket, sys, traceback, types
control = socket.socket(fileno=int(sys.argv[1]))
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 ignores default-handled signals sent from inside

class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

def child(source, args, fds, targets):
    null = os.open(os.devnull, os.O_RDWR)
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, max(targets + [null]) + 1) for fd in fds]
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for fd, target in zip(high, targets):
        os.dup2(fd, target)
    keep = sorted({0, 1, 2, *targets})
    for low, up in zip(keep, keep[1:] + [1 << 20]):
        if up > low + 1:  # closerange(n, n) would close every descriptor
            os.closerange(low + 1, up)
    if libc.unshare(0x10000000 | 0x08000000) != 0:  # CLONE_NEWUSER | CLONE_NEWIPC
        os.write(2, b"sandbox: unshare failed\n"); os._exit(126)
    if libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), (ctypes.c_uint32 * 6)()) != 0:
        os.write(2, b"sandbox: capset failed\n"); os._exit(126)
    os.chdir("/sandbox")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main = types.ModuleType("__main__")
    sys.modules["__main__"], sys.argv, code = main, ["-c", *args], 0
    try:
        exec(compile(source, "<string>", "exec"), main.__dict__)
    except SystemExit as e:
        code = e.code if e.code is None or isinstance(e.code, int) else (print(e.code, file=sys.stderr) or 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit((code or 0) & 255)

def wipe():
    """Empty /sandbox; False if anything is left."""
    def writable(func, path, _):
        os.chmod(os.path.dirname(path), 0o700)
        func(path)
    try:
        for name in os.listdir("/sandbox"):
            path = os.path.join("/sandbox", name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, onerror=writable)
            else:
                os.unlink(path)
        return not os.listdir("/sandbox")
    except BaseException:
        return False

while True:
    message, fds, _, _ = socket.recv_fds(control, 1 << 16, 64)
    if not message:
        break
    if message == b"kill":  # arrived after its program had ended
        continue
    header = json.loads(message)
    chunks = [control.recv(1 << 17) for _ in range(header["chunks"])]
    pid = os.fork()
    if pid == 0:
        control.close()
        child(b"".join(chunks).decode(), header["args"], fds, header["targets"])
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    if control in select.select([control, pidfd], [], [])[0]:  # "kill", or the caller is gone
        os.kill(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    os.close(pidfd)
    clean = wipe()
    control.send(json.dumps([os.waitstatus_to_exitcode(status), clean]).encode())
    if not clean:
        break
'''


class Harness:
    """The trusted process's end: one harness sandbox, running one program at a time."""

    def __init__(self, argv: list[str], env: dict, user: dict):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(argv + ["-I", "-S", "-B", "-c", HARNESS, str(theirs.fileno())], cwd="/", env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     pass_fds=(theirs.fileno(),), start_new_session=True, **user)
        theirs.close()
        self.control, self.alive = ours, True

    def start(self, source: str, args: list[str], fds: list[int], targets: list[int]) -> "Program":
        data = source.encode()
        chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
        try:
            socket.send_fds(self.control, [json.dumps({"args": args, "targets": targets, "chunks": len(chunks)}).encode()], fds)
            for chunk in chunks:
                self.control.send(chunk)
        except OSError:
            self.alive = False
        return Program(self)

    def close(self) -> None:
        self.alive = False
        self.control.close()
        self.proc.kill()
        self.proc.wait()


class Program:
    """A Popen-like handle to one program running in the harness: wait(timeout), kill(), returncode."""

    def __init__(self, harness: Harness):
        self.harness, self.returncode = harness, None if harness.alive else -9

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self.harness.control], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired("sandboxed program", timeout)
            try:
                self.returncode, self.harness.alive = json.loads(self.harness.control.recv(1 << 10))
            except (OSError, ValueError):  # the harness is gone (its sandbox was killed): so is the program
                self.returncode, self.harness.alive = -9, False
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                self.harness.control.send(b"kill")
            except OSError:
                pass
            self.wait()


class Pool:
    """Idle harnesses of this process (a forked child starts its own; concurrent or nested programs get more)."""

    def __init__(self):
        self.lock, self.idle, self.owner = threading.Lock(), [], os.getpid()
        STOP_HOOKS.append(self.close)  # run at exit, and by the tests' leftover check

    def take(self, argv: list[str], env: dict, user: dict) -> Harness:
        with self.lock:
            if self.owner != os.getpid():  # inherited through fork: the parent's, not ours to use
                for harness in self.idle:
                    harness.control.close()
                self.idle, self.owner = [], os.getpid()
            while self.idle:
                harness = self.idle.pop()
                if harness.proc.poll() is None:
                    return harness
                harness.close()
        return Harness(argv, env, user)

    def give(self, harness: Harness) -> None:
        with self.lock:
            if harness.alive and self.owner == os.getpid():
                self.idle.append(harness)
                return
        harness.close()

    def close(self) -> None:
        with self.lock:
            if self.owner == os.getpid():
                for harness in self.idle:
                    harness.close()
            self.idle = []
