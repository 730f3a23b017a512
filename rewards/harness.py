"""A pre-started bubblewrap sandbox: a trusted harness, started once per process, starts a fresh interpreter per program.

Starting bubblewrap for every program cost ~1.65x a bare `python3 -I -S` start (issue 12 asks <= 1.5x). So each
process starts one bubblewrap sandbox (sandbox.py's namespaces, mounts and user) running HARNESS below as its
PID 1, and each program runs in a child the harness forks, which executes a fresh `python3 -I -S -B` (the
program's source travels in its arguments). Every program starts from the same state as the first (issue 25):
- Nothing of the harness reaches a program: the child execs a new interpreter, so no memory, module, frame or
  exit status of the harness or of an earlier program survives into it; it keeps only its own pipes (the
  harness's control socket and every other descriptor are closed) and the harness's fixed environment.
- Before each program the harness mounts a new tmpfs of SANDBOX_BYTES and SANDBOX_INODES on /sandbox (the
  last one is detached and freed; the harness keeps CAP_SYS_ADMIN in its own user namespace for this alone),
  so the folder's mode, owner, times, xattrs, free-space and inode counters are those of a new folder: there
  is nothing to wipe, so no program can make a wipe fail. Each child unshares a new IPC namespace.
- The child then drops every capability and installs seccomp.py's filter (no sockets, so no abstract Unix
  socket in the network namespace the programs share; no new namespaces; no memfd or System V memory).
- A program cannot reach the harness: the harness is PID 1 of the sandbox's PID namespace, so the kernel
  drops every signal (SIGKILL included) sent to it from inside, as all its signals are left at their default;
  it is not dumpable, so programs cannot ptrace it or read its memory through /proc; and programs cannot
  fork (RLIMIT_NPROC=1), so no process outlives the child the harness kills.
What a program can still see differ: its PID (the harness forks one child per program, so the PID counts the
programs before it; no program can change that count) and host-wide figures (time, load, free memory).
A child that cannot set itself up (a namespace, the mount, the filter or the exec failing) reports why on a
pipe that the exec closes; the caller sees it as `setup_error`, a failure of the sandbox, not of the program.
Every program gets `sys.argv` as `python -c` would set it, its stdin and stdout on /dev/null unless the caller
passes files, and the limits sandbox.sandboxed asks for, set before its interpreter starts; its exit code is reported as Popen's
returncode (negative: killed by that signal).
"""
from __future__ import annotations

import base64
import json
import os
import select
import socket
import subprocess
import threading

from posttrain.rewards.guard import STOP_HOOKS
from posttrain.rewards.seccomp import INSTALL

CHUNK = 1 << 16  # base64 source characters per control message and per argument of the program's interpreter
# Run by the program's interpreter first: the source from its arguments (base64, in pieces), then sys.argv as -c sets it.
BOOT = ("import sys as _s, binascii as _b\n_n = int(_s.argv[1])\n"
        "_c = compile(_b.a2b_base64(''.join(_s.argv[2:2 + _n])).decode(), '<string>', 'exec')\n"
        "_s.argv[:] = ['-c', *_s.argv[2 + _n:]]\ndel _s, _b, _n\nexec(globals().pop('_c'))\n")

# Trusted code, run as PID 1 inside bubblewrap as `python -I -S -B -c HARNESS control_fd setup_json`.
HARNESS = r'''
import ctypes, fcntl, json, os, resource, select, signal, socket, sys
control = socket.socket(fileno=int(sys.argv[1]))
SETUP = json.loads(sys.argv[2])  # python, boot, tmpfs (mount options), filter (hex)
FILTER, TMPFS = bytes.fromhex(SETUP["filter"]), SETUP["tmpfs"].encode()
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 ignores default-handled signals sent from inside
mounted = False

def fresh_sandbox():
    """A new tmpfs on /sandbox for the next program (the last one's is detached and freed): "" or why not."""
    global mounted
    if mounted and libc.umount2(b"/sandbox", 2) != 0:  # MNT_DETACH
        return f"unmounting the last /sandbox failed: {os.strerror(ctypes.get_errno())}"
    mounted = libc.mount(b"tmpfs", b"/sandbox", b"tmpfs", 0x2 | 0x4 | 0x8, TMPFS) == 0  # NOSUID | NODEV | NOEXEC
    return "" if mounted else f"mounting /sandbox failed: {os.strerror(ctypes.get_errno())}"
''' + INSTALL + r'''
class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

def child(argv, fds, targets, limits, report):
    def fail(step, errno=None):
        os.write(report, f"{step} failed: {os.strerror(errno or ctypes.get_errno())}".encode())
        os._exit(126)
    null = os.open(os.devnull, os.O_RDWR)
    targets = targets + [max(targets + [null, 2]) + 1]  # the report pipe, kept close-on-exec
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, targets[-1] + 1) for fd in fds + [report]]
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for fd, target in zip(high, targets):
        os.dup2(fd, target)
    report = targets[-1]
    fcntl.fcntl(report, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    keep = sorted({0, 1, 2, *targets})
    for low, up in zip(keep, keep[1:] + [1 << 20]):
        if up > low + 1:  # closerange(n, n) would close every descriptor
            os.closerange(low + 1, up)
    if libc.unshare(0x08000000) != 0:  # CLONE_NEWIPC: System V and POSIX IPC objects die with the program
        fail("unshare")
    os.chdir("/sandbox")
    if libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), (ctypes.c_uint32 * 6)()) != 0:
        fail("capset")
    if not install_filter(libc, FILTER):
        fail("seccomp")
    try:
        for which, soft, hard in limits:
            resource.setrlimit(which, (soft, hard))
        os.execve(argv[0], argv, os.environ)
    except (OSError, ValueError) as e:
        fail("limits or exec", getattr(e, "errno", None) or 22)

while True:
    message, fds, _, _ = socket.recv_fds(control, 1 << 16, 64)
    if not message:
        break
    if message == b"kill":  # arrived after its program had ended
        continue
    header = json.loads(message)
    chunks = [control.recv(1 << 17) for _ in range(header["chunks"])]
    error = fresh_sandbox()
    if error:
        for fd in fds:
            os.close(fd)
        control.send(json.dumps([126, error]).encode())
        continue
    report, report_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        control.close()
        os.close(report)
        child([SETUP["python"], "-I", "-S", "-B", "-c", SETUP["boot"], str(len(chunks)), *chunks, *header["args"]],
              fds, header["targets"], header["limits"], report_end)
    for fd in fds + [report_end]:
        os.close(fd)
    del chunks
    pidfd = os.pidfd_open(pid)
    if control in select.select([control, pidfd], [], [])[0]:  # "kill", or the caller is gone
        os.kill(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    os.close(pidfd)
    error = os.read(report, 4096).decode(errors="replace")
    os.close(report)
    control.send(json.dumps([os.waitstatus_to_exitcode(status), error]).encode())
'''


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except (OSError, ValueError):
        return []


class Harness:
    """The trusted process's end: one harness sandbox, running one program at a time."""

    def __init__(self, argv: list[str], env: dict, user: dict, setup: dict):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        setup = {**setup, "boot": BOOT}
        self.proc = subprocess.Popen(argv + ["-I", "-S", "-B", "-c", HARNESS, str(theirs.fileno()), json.dumps(setup)],
                                     cwd="/", env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), start_new_session=True, **user)
        theirs.close()
        self.control, self.alive, self._pid = ours, True, None

    def pid(self) -> int | None:
        """The harness's process id on the host (bubblewrap's child), for reading its children's /proc."""
        if self._pid is None:
            self._pid = next(iter(_children(self.proc.pid)), None)
        return self._pid

    def start(self, source: str, args: list[str], fds: list[int], targets: list[int], limits: list) -> "Program":
        """Run `source` with `args` in a fresh child, `fds` as its descriptors `targets`, under `limits`
        ((resource, soft, hard) for setrlimit, set before the interpreter starts)."""
        data = base64.b64encode(source.encode())
        chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
        try:
            socket.send_fds(self.control, [json.dumps({"args": args, "targets": targets, "limits": limits, "chunks": len(chunks)}).encode()], fds)
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
    """A Popen-like handle to one program running in the harness: wait(timeout), kill(), returncode, and
    setup_error ("" unless the sandbox failed to start the program: then it says why)."""

    def __init__(self, harness: Harness):
        self.harness, self.returncode, self.setup_error, self._pid = harness, None, "", None
        if not harness.alive:
            self.returncode, self.setup_error = -9, "the sandbox harness is not running"

    def host_pid(self) -> int | None:
        """The program's process id on the host while it runs (None once it has ended)."""
        if self._pid is None and self.returncode is None and self.harness.pid():
            self._pid = next(iter(_children(self.harness.pid())), None)
        return self._pid

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self.harness.control], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired("sandboxed program", timeout)
            try:
                self.returncode, self.setup_error = json.loads(self.harness.control.recv(1 << 12))
            except (OSError, ValueError):  # the harness is gone (its sandbox was killed): so is the program
                self.returncode, self.setup_error, self.harness.alive = -9, "the sandbox harness died", False
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

    def take(self, argv: list[str], env: dict, user: dict, setup: dict) -> Harness:
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
        return Harness(argv, env, user, setup)

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
