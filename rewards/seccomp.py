"""The system calls a sandboxed program may not make: a seccomp filter, installed before the program starts.

What it refuses (with EPERM) and why:
- socket, socketpair: no sockets at all, so no abstract Unix socket (a name shared by every program of one
  network namespace), no network, and no socket buffers, which the kernel keeps outside the memory limit;
- memfd_create, memfd_secret, shmget, msgget, semget, mq_open: memory outside the address-space limit, and
  IPC objects;
- unshare, setns, clone with a CLONE_NEW* flag (clone3 says ENOSYS, so libc falls back to clone): no new
  namespaces, in which a program would regain capabilities (and could mount a tmpfs of its own);
- mount and the new mount API, io_uring_setup, bpf, userfaultfd, perf_event_open, ptrace, process_vm_*,
  the keyring calls: kernel objects and introspection that no test needs.
Everything else is allowed. A call made with another ABI (x32, or 32-bit calls from a 64-bit process) is
refused as a whole: its numbers differ. The filter is built here, as bytes, for x86_64 and aarch64; on other
machines there is none (FILTER is empty) and the sandbox relies on its limits and namespaces alone.
"""
from __future__ import annotations

import functools
import platform
import struct

_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_DENIED = {  # name: (x86_64 number, aarch64 number)
    "socket": (41, 198), "socketpair": (53, 199), "memfd_create": (319, 279), "memfd_secret": (447, 447),
    "shmget": (29, 194), "msgget": (68, 186), "semget": (64, 190), "mq_open": (240, 180),
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsmount": (432, 432),
    "io_uring_setup": (425, 425), "bpf": (321, 280), "userfaultfd": (323, 282), "perf_event_open": (298, 241),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "add_key": (248, 217), "request_key": (249, 218), "keyctl": (250, 219),
}
_CLONE, _CLONE3 = (56, 220), (435, 435)
NEW_NAMESPACES = 0x7E020080  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
_X32_BIT = 0x40000000
_LD_ABS_W, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _EPERM, _ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38


def _program(arch: int, column: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions; jumps count instructions skipped. Offsets into struct seccomp_data:
    nr 0, arch 4, args[0] 16 (its low half: the clone flags)."""
    denied = sorted({numbers[column] for numbers in _DENIED.values()})
    program = [(_LD_ABS_W, 0, 0, 4), (_JEQ, 1, 0, arch), (_RET, 0, 0, _EPERM),  # another ABI: refused
               (_LD_ABS_W, 0, 0, 0), (_JGE, 0, 1, _X32_BIT), (_RET, 0, 0, _EPERM)]
    clone_check = len(program) + len(denied)
    deny, allow = clone_check + 5, clone_check + 6
    for number in denied:
        program.append((_JEQ, deny - len(program) - 1, 0, number))
    program += [(_JEQ, 0, 1, _CLONE3[column]), (_RET, 0, 0, _ENOSYS),
                (_JEQ, 0, 3, _CLONE[column]), (_LD_ABS_W, 0, 0, 16), (_JSET, 0, 1, NEW_NAMESPACES),
                (_RET, 0, 0, _EPERM), (_RET, 0, 0, _ALLOW)]
    assert program[deny] == (_RET, 0, 0, _EPERM) and program[allow] == (_RET, 0, 0, _ALLOW)
    return program


@functools.lru_cache(maxsize=None)
def filter_bytes(machine: str | None = None) -> bytes:
    """The filter as struct sock_filter[] bytes for this machine (b"" where it has none)."""
    machine = machine or platform.machine()
    if machine not in _ARCH:
        return b""
    column = 0 if machine == "x86_64" else 1
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in _program(_ARCH[machine], column))


# Installs the filter given as bytes (FILTER); run in the process that is about to run or exec the program,
# after anything it needs to set up with the calls the filter refuses. `libc` is ctypes.CDLL(None, use_errno=True).
INSTALL = r'''
def install_filter(libc, program):
    import ctypes
    if not program:
        return True
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return libc.prctl(22, 2, ctypes.byref(Fprog(len(program) // 8, program)), 0, 0) == 0  # PR_SET_SECCOMP, FILTER
'''
