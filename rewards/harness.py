"""A pre-started bubblewrap sandbox: a trusted harness, started once per process, runs each program in a fresh interpreter.

Starting bubblewrap for every program cost ~1.65x a bare `python3 -I -S` start (issue 12 asks <= 1.5x). So each
process starts one bubblewrap sandbox (sandbox.py's namespaces, mounts and user) running HARNESS below as its
PID 1. After each program has ended (and before the first), the harness prepares the next one's: a new tmpfs
on /sandbox and a forked child that execs a fresh `python3 -I -S -B` running BOOT, which waits for its
program. So a program costs what an interpreter start costs, and that start overlaps the caller's work
between programs. Every program starts from the same state as the first (issue 25):
- Nothing of the harness or of an earlier program reaches it: its interpreter is a new exec, started after
  the program before it was reaped (no memory, module, frame or exit status survives); it keeps only its own
  pipes (the control socket and every other descriptor of the harness are closed) and a fixed environment.
  BOOT dates /sandbox at the program's start, so the folder's times are the program's own.
- /sandbox is a new tmpfs of SANDBOX_BYTES and SANDBOX_INODES per program (the last one is detached and
  freed; the harness keeps CAP_SYS_ADMIN in its own user namespace for this alone), so its mode, owner,
  times, xattrs, free-space and inode counters are a new folder's, and there is nothing to wipe that a
  program could make fail. Each child unshares a new IPC namespace.
- The child drops every capability and installs seccomp.py's filter before its exec (no sockets, so no
  abstract Unix socket in the network namespace the programs share; no new namespaces; no memfd or System V
  memory). BOOT sets the caller's rlimits before the program's first line.
- A program cannot reach the harness: the harness is PID 1 of the sandbox's PID namespace, so the kernel
  drops every signal (SIGKILL included) sent to it from inside, as all its signals are left at their default;
  it is not dumpable, so programs cannot ptrace it or read its memory through /proc; and programs cannot
  fork (RLIMIT_NPROC=1), so no process outlives the child the harness kills. No two programs run at once.
What a program can still see differ: its PID (one child per program, so it counts the programs before it; no
program can change that count), its interpreter's start time (when the program before it ended), and
host-wide figures (time, load, free memory).
A child that cannot set itself up (the mount, the namespace, the filter or the exec failing) reports why on
a pipe that the exec closes; the caller sees it as `setup_error`, a failure of the sandbox, not the program.
Every program gets `sys.argv` as `python -c` would set it, its stdin and stdout on /dev/null unless the caller
passes files; its exit code is reported as Popen's returncode (negative: killed by that signal).
"""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import threading

from posttrain.rewards.guard import STOP_HOOKS
from posttrain.rewards.seccomp import INSTALL

CHUNK = 1 << 16  # source bytes per control message (a SOCK_SEQPACKET message must fit the socket buffer)
# Run first by each prepared interpreter (trusted until the program's code runs): waits on fd 3 for its program
# (a length, then marshal of (args, targets, limits, source) with the descriptors alongside), puts the descriptors
# in place, sets the limits, dates /sandbox now, and runs the source as `python -c` would.
BOOT = """
import _socket as _k, fcntl as _f, marshal as _m, os as _o, resource as _r, sys as _s
import json  # the code verifier's server reads JSON: imported while the interpreter waits
def _take():
    sock = _k.socket(fileno=3)
    head, ancillary, _, _ = sock.recvmsg(8, _k.CMSG_SPACE(64 * 4))
    while 0 < len(head) < 8:
        head += sock.recv(8 - len(head))
    if len(head) < 8:
        _o._exit(0)  # the harness is gone
    fds = [fd for _, _, data in ancillary for fd in memoryview(data[:len(data) // 4 * 4]).cast('i').tolist()]
    size, payload = int.from_bytes(head, 'little'), b''
    while len(payload) < size:
        more = sock.recv(size - len(payload))
        if not more:
            _o._exit(0)
        payload += more
    sock.close()
    args, targets, limits, source = _m.loads(payload)
    high = [_f.fcntl(fd, _f.F_DUPFD, 100) for fd in fds]
    for fd in fds:
        _o.close(fd)
    for fd, target in zip(high, targets):
        _o.dup2(fd, target)
        _o.close(fd)
    for which, soft, hard in limits:
        _r.setrlimit(which, (soft, hard))
    _o.utime('/sandbox')
    _s.argv[:] = ['-c', *args]
    return compile(source, '<string>', 'exec')
_c = _take()
del _k, _f, _m, _o, _r, _s, _take, json
exec(globals().pop('_c'))
"""

# Trusted code, run as PID 1 inside bubblewrap as `python -I -S -B -c HARNESS control_fd setup_json`.
HARNESS = r'''
import ctypes, fcntl, json, marshal, os, select, signal, socket, sys
control = socket.socket(fileno=int(sys.argv[1]))
SETUP = json.loads(sys.argv[2])  # python, boot, tmpfs (mount options), filter (hex)
FILTER, TMPFS = bytes.fromhex(SETUP["filter"]), SETUP["tmpfs"].encode()
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 ignores default-handled signals sent from inside
mounted, spare = False, None

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

def child(sock, report):
    """The prepared interpreter: its descriptors, an IPC namespace, no capabilities, the filter, then exec."""
    def fail(step, errno=None):
        os.write(report, f"{step} failed: {os.strerror(errno or ctypes.get_errno())}".encode())
        os._exit(126)
    null = os.open(os.devnull, os.O_RDWR)
    sock, report = fcntl.fcntl(sock, fcntl.F_DUPFD, 10), fcntl.fcntl(report, fcntl.F_DUPFD, 10)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.dup2(sock, 3)
    os.dup2(report, 4)
    fcntl.fcntl(4, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    report = 4
    os.closerange(5, 1 << 20)
    if libc.unshare(0x08000000) != 0:  # CLONE_NEWIPC: System V and POSIX IPC objects die with the program
        fail("unshare")
    os.chdir("/sandbox")
    if libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), (ctypes.c_uint32 * 6)()) != 0:
        fail("capset")
    if not install_filter(libc, FILTER):
        fail("seccomp")
    try:
        os.execve(SETUP["python"], [SETUP["python"], "-I", "-S", "-B", "-c", SETUP["boot"]], os.environ)
    except OSError as e:
        fail("exec", e.errno)

def prepare():
    """A fresh /sandbox and a fresh interpreter waiting for the next program: (pid, socket, report) or an error."""
    error = fresh_sandbox()
    if error:
        return error
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    report, report_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        control.close()
        ours.close()
        os.close(report)
        child(theirs.fileno(), report_end)
    theirs.close()
    os.close(report_end)
    return pid, ours, report

while True:
    message, fds, _, _ = socket.recv_fds(control, 1 << 16, 64)
    if not message:
        break
    if message == b"kill":  # arrived after its program had ended
        continue
    header = json.loads(message)
    source = b"".join(control.recv(1 << 17) for _ in range(header["chunks"]))
    if spare is None:
        spare = prepare()
    if isinstance(spare, str):  # no /sandbox or no fork: nothing ran
        for fd in fds:
            os.close(fd)
        control.send(json.dumps([126, spare]).encode())
        spare = None
        continue
    (pid, sock, report), spare = spare, None
    payload = marshal.dumps((header["args"], header["targets"], header["limits"], source))
    try:
        socket.send_fds(sock, [len(payload).to_bytes(8, "little")], fds)
        sock.sendall(payload)
        sent = True
    except OSError:
        sent = False  # it died before its program came: its report says why, if it knows
    sock.close()
    for fd in fds:
        os.close(fd)
    del source, payload
    pidfd = os.pidfd_open(pid)
    if control in select.select([control, pidfd], [], [])[0]:  # "kill", or the caller is gone
        os.kill(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    os.close(pidfd)
    error = os.read(report, 4096).decode(errors="replace") or ("" if sent else "the prepared interpreter died")
    os.close(report)
    control.send(json.dumps([os.waitstatus_to_exitcode(status), error]).encode())
    spare = prepare()  # for the next program, now that this one is gone
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
        """Run `source` with `args` in a fresh interpreter, `fds` as its descriptors `targets`, under `limits`
        ((resource, soft, hard) for setrlimit, set before the program's first line)."""
        data = source.encode()
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
