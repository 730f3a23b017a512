"""Backstops that load does not move: how long a guarded call has used CPU, and how long it has been blocked.

A guard worker (guard.py) stops a call at its CPU-time limit itself (SIGPROF). Its parent stops what that
cannot: a call stuck in one long C call (no signal handler runs: a huge big-integer power, a set of
hash-colliding keys), which shows as CPU time past the limit, and a call blocked without using CPU. "Blocked"
is wall-clock time minus the time the worker (and the sandboxed programs it waits for, which the code
verifier reports through `report_busy`) spent on a CPU or waiting for one, from the kernel's per-process
schedstat. So a loaded machine, where everything waits for a CPU, does not bring a backstop closer, and an
honest call within its CPU limit is never cut off, however slow the machine.

The worker and its parent share one CallClock: which call runs, since when, and the busy time so far.
"""
from __future__ import annotations

import os
import time

_INDEX, _START, _BUSY, _CPU, _EXTRA = range(5)
_current: "CallClock | None" = None  # the clock of the worker this process is, if it is one
_own_stat: int | None = None


def schedstat(pid: int | str = "self") -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of a process, None where the kernel does not say."""
    try:
        if pid == "self" and _own_stat is not None:
            text = os.pread(_own_stat, 128, 0)
        else:
            with open(f"/proc/{pid}/schedstat", "rb") as f:
                text = f.read()
        on_cpu, waiting = text.split()[:2]
        return int(on_cpu) / 1e9, int(waiting) / 1e9
    except (OSError, ValueError):
        return None


def report_busy(seconds: float) -> None:
    """Add time a sandboxed program this worker waited for spent running or waiting for a CPU."""
    if _current is not None:
        _current.values[_EXTRA] += seconds


class CallClock:
    def __init__(self, context):
        self.values = context.RawArray("d", 5)
        self.values[_INDEX] = -1

    def serve(self) -> None:
        """In the worker: this clock is ours to report to."""
        global _current, _own_stat
        _current = self
        try:
            _own_stat = os.open("/proc/self/schedstat", os.O_RDONLY)
        except OSError:
            _own_stat = None

    def begin(self, index: int) -> None:
        """In the worker: call `index` of the chunk starts now."""
        cpu, waiting = schedstat() or (time.process_time(), 0.0)
        values = self.values
        values[_INDEX] = -1  # the parent ignores a call while its fields change
        values[_START], values[_BUSY], values[_CPU], values[_EXTRA] = time.monotonic(), cpu + waiting, cpu, 0.0
        values[_INDEX] = index

    def reset(self) -> None:
        self.values[_INDEX] = -1

    def running(self) -> int:
        """The index of the call the worker last began (-1 when none has begun)."""
        return int(self.values[_INDEX])

    def overrun(self, pid: int, cpu_limit_s: float, stall_limit_s: float) -> tuple[str | None, float]:
        """In the parent: (why to stop the running call or None, seconds until it could next be overdue)."""
        index, start, busy, cpu, extra = self.values[:]
        if index < 0 or int(self.values[_INDEX]) != index:
            return None, 0.05  # between calls: look again soon
        elapsed = time.monotonic() - start
        if elapsed < min(cpu_limit_s, stall_limit_s):  # neither can be past its limit yet: no need to look
            return None, min(cpu_limit_s, stall_limit_s) - elapsed
        stat = schedstat(pid)
        now_cpu, now_wait = stat or (cpu, 0.0)
        used = now_cpu - cpu
        stalled = time.monotonic() - start - (now_cpu + now_wait - busy) - extra
        if used > cpu_limit_s:
            return f"over {cpu_limit_s:g}s of CPU time in a call no signal could interrupt (worker killed)", 0.0
        if stalled > stall_limit_s:
            return f"blocked over {stall_limit_s:g}s of wall-clock time without using CPU (worker killed)", 0.0
        return None, max(min(cpu_limit_s - used, stall_limit_s - stalled), 0.01)
