"""CPU-time limits and hard backstops for verifier calls: persistent forked worker processes.

A worker takes a chunk of calls `fn(*args)` (one round trip for many rows) and sends back their `Outcome`s in
groups, at least every FLUSH_S. Each call runs under its own CPU-time limit, counted by a SIGPROF interval timer
(ITIMER_PROF: this process's user + system time), so a busy machine does not change a verdict. A call stuck
where no signal can interrupt it (a long C call such as a huge big-integer power) or blocked without using
CPU is caught by the parent's backstops (progress.py: CPU time past 2 L + 1 s, or time blocked past
WALL_FACTOR x L + WALL_SLACK_S, neither moved by load): the worker is killed, that call times out and is never
run again, and the rest of its chunk goes to a fresh worker. A worker that dies (a crash, `os._exit` in a
verifier) costs the call it was running and nothing else. Each worker also gets an
address-space limit so a memory bomb raises MemoryError in the worker instead of taking the trainer down.

Workers are forked (not spawned) so they start in milliseconds with the caller's modules already
imported; they run only verifier code, never torch.
"""
from __future__ import annotations

import atexit
import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import resource
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from posttrain.rewards.core import RowError
from posttrain.rewards.progress import CallClock

MEMORY_HEADROOM_BYTES = 2 << 30  # address space a worker may add on top of what it inherits
POOL_WORKERS = min(2, os.cpu_count() or 1)
WALL_FACTOR, WALL_SLACK_S = 3.0, 1.0  # a call with a CPU limit of L seconds may be blocked 3 L + 1 seconds
CHUNKS_PER_WORKER = 8  # a batch is cut into this many chunks per worker: few round trips, balanced ends
FLUSH_S = 0.02  # a worker sends the outcomes it has at least this often (and at the end of a chunk)
_CONTEXT = multiprocessing.get_context("fork")
# Run in the parent before each worker is forked, so workers inherit what they prepare (a verifier's warm
# parser). Each must make its own repeats cheap (functools.cache): a restarted worker runs them again.
BEFORE_FORK_HOOKS: list[Callable[[], None]] = []
_start_lock = threading.Lock()
_in_worker = False


@dataclass(frozen=True)
class Outcome:
    status: str  # "ok" | "error" | "timeout" | "crashed"
    value: Any = None
    message: str = ""
    row_error: bool = False  # the error is a RowError (bad data, not bad model output)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class CpuTimeout(BaseException):
    """A call used up its CPU seconds. A BaseException, so the `except Exception` of the libraries it
    interrupts (math-verify, sympy) does not swallow it."""


def _on_sigprof(signum, frame):
    raise CpuTimeout("CPU time limit reached")


@contextlib.contextmanager
def cpu_limit(seconds: float):
    """Raise CpuTimeout(...) in this block once it has used `seconds` of this process's CPU time. Works in a
    worker's main thread (where SIGPROF is ours); elsewhere it does nothing and the enclosing guard's
    limit holds. Limits nest: an inner one is cut to what the outer has left, and the outer resumes after."""
    if signal.getsignal(signal.SIGPROF) is not _on_sigprof or threading.current_thread() is not threading.main_thread():
        yield
        return
    outer_left = signal.getitimer(signal.ITIMER_PROF)[0]
    if outer_left and outer_left <= seconds:
        yield  # the outer limit comes first
        return
    start = time.process_time()
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        left = outer_left - (time.process_time() - start) if outer_left else 0.0
        signal.setitimer(signal.ITIMER_PROF, max(left, 1e-3) if outer_left else 0.0)


def _call(fn: Callable, args: Sequence, cpu_s: float | None = None) -> Outcome:
    try:
        with cpu_limit(cpu_s) if cpu_s else contextlib.nullcontext():
            value = fn(*args)
        return Outcome("ok", value)
    except CpuTimeout:
        return Outcome("timeout", message=f"over {cpu_s:g}s of CPU time")
    except RowError as e:
        return Outcome("error", message=str(e)[:500], row_error=True)
    except BaseException as e:  # noqa: BLE001 - math-verify's TimeoutException is a BaseException
        return Outcome("error", message=f"{type(e).__name__}: {str(e)[:300]}")


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _serve(conn, parent_end, clock: CallClock) -> None:
    global _in_worker
    _in_worker = True
    clock.serve()
    # Drop the inherited parent end of our pipe (the others went at fork), so when the parent dies recv() sees EOF.
    parent_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGPROF, _on_sigprof)
    try:
        limit = _vm_size_bytes() + MEMORY_HEADROOM_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError):
        pass  # no /proc or no permission: the time limit still holds
    parent = os.getppid()
    while True:
        try:
            # Siblings forked later hold copies of the pipe, so EOF alone may never come: also notice
            # being re-parented, which is how a parent killed by SIGKILL shows.
            while not conn.poll(1.0):
                if os.getppid() != parent:
                    return
            fn, calls = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        done, sent_at = [], time.monotonic()
        for index, (args, cpu_s) in enumerate(calls):
            clock.begin(index)
            done.append(_call(fn, args, cpu_s))
            if index == len(calls) - 1 or time.monotonic() - sent_at >= FLUSH_S:
                _send_outcomes(conn, done)
                done, sent_at = [], time.monotonic()


def _send_outcomes(conn, outcomes: list[Outcome]) -> None:
    try:
        conn.send(outcomes)
    except Exception:  # noqa: BLE001 - an unpicklable result must not kill the worker, nor cost the others
        conn.send([_sendable(o) for o in outcomes])


def _sendable(outcome: Outcome) -> Outcome:
    try:
        pickle.dumps(outcome)
        return outcome
    except Exception as e:  # noqa: BLE001
        return Outcome("error", message=f"result could not be sent back: {type(e).__name__}: {e}")


def backstop_s(cpu_s: float) -> float:
    return cpu_s * WALL_FACTOR + WALL_SLACK_S


class Worker:
    """One forked worker process, restarted after a wall-clock timeout or a crash."""

    def __init__(self) -> None:
        self._proc = None
        self._conn = None
        self._clock: CallClock | None = None
        _all_workers.append(self)

    def _start(self) -> None:
        # One start at a time: a worker forked while another's pipe is new would inherit that pipe's child
        # end (and process sentinel), and the parent would never see the other worker die.
        with _start_lock:
            for hook in BEFORE_FORK_HOOKS:
                hook()
            parent_conn, child_conn = _CONTEXT.Pipe()
            self._clock = CallClock(_CONTEXT)
            self._proc = _CONTEXT.Process(target=_serve, args=(child_conn, parent_conn, self._clock), daemon=True,
                                          name="posttrain-rewards-worker")
            self._proc.start()
            child_conn.close()
        self._conn = parent_conn

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
            self._conn.close()
        self._proc = self._conn = None

    def run(self, fn: Callable, calls: Sequence[tuple[Sequence, float]]) -> list[Outcome]:
        """One Outcome per (args, CPU seconds) in `calls`, in order. When a call breaks the worker (a backstop,
        or the process died), that call gets the outcome and is never run again (a bomb would cost its backstop
        twice); the calls it cut off, and any that finished unreported, go to a fresh worker."""
        if not calls:
            return []
        if self._proc is None or not self._proc.is_alive():
            self.stop()
            self._start()
        self._clock.reset()
        try:
            self._conn.send((fn, list(calls)))
        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable argument: find which, keep the rest
            if len(calls) == 1:
                return [Outcome("error", message=f"could not send the call to the worker: {type(e).__name__}: {e}")]
            return [o for call in calls for o in self.run(fn, [call])]
        got, broken, culprit = self._receive([cpu_s for _, cpu_s in calls])
        if broken is None:
            return got
        if not len(got) <= culprit < len(calls):  # died before it began a call: the first unanswered broke it
            culprit = len(got)
        return got + self.run(fn, calls[len(got):culprit]) + [broken] + self.run(fn, calls[culprit + 1:])

    def _receive(self, limits: list[float]) -> tuple[list[Outcome], Outcome | None, int]:
        """(outcomes as they come, None, -1), or (those that came, the outcome that broke the worker, the index
        of the call it was running)."""
        got: list[Outcome] = []
        try:
            while len(got) < len(limits):
                running = self._clock.running()
                limit = limits[running] if len(got) <= running < len(limits) else max(limits[len(got):])
                why, wait = self._clock.overrun(self._proc.pid, cpu_limit_s=backstop_s(limit) - limit,
                                                stall_limit_s=backstop_s(limit))
                if why:
                    self.stop()
                    return got, Outcome("timeout", message=why), running
                # The process's sentinel too: should anything else in this process fork while a worker
                # starts, the child would hold the pipe's other end, which then never reports EOF.
                ready = multiprocessing.connection.wait([self._conn, self._proc.sentinel], wait + FLUSH_S)
                if not ready:
                    continue
                if self._conn not in ready and not self._conn.poll(0):
                    raise EOFError
                got += self._conn.recv()
            return got, None, -1
        except (EOFError, OSError):
            code = self._proc.exitcode if self._proc is not None else None
            running = self._clock.running() if self._clock is not None else -1
            self.stop()
            return got, Outcome("crashed", message=f"worker process died (exit code {code})"), running
        except BaseException:
            self.stop()  # interrupted mid-batch: its late answers must never be read as the next batch's
            raise


_all_workers: list[Worker] = []
_shared_worker: Worker | None = None
_shared_lock = threading.Lock()
_pool: "WorkerPool | None" = None


def _inline() -> bool:
    """Inside a worker (or a daemon process, which may not fork children) calls run inline: the enclosing
    worker's limits apply."""
    return _in_worker or multiprocessing.current_process().daemon


def run_guarded(fn: Callable, args: Sequence, timeout_s: float) -> Outcome:
    """`fn(*args)` under a CPU-time limit of `timeout_s` and its wall-clock backstop."""
    global _shared_worker
    if _inline():
        return _call(fn, args, timeout_s)
    with _shared_lock:
        if _shared_worker is None:
            _shared_worker = Worker()
        return _shared_worker.run(fn, [(args, timeout_s)])[0]


class WorkerPool:
    """`size` workers fed by as many threads; `map` sends them chunks of calls and keeps input order."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: queue.Queue[Worker] = queue.Queue()
        for _ in range(size):
            self._idle.put(Worker())

    def _run_chunk(self, fn: Callable, calls: list) -> list[Outcome]:
        worker = self._idle.get()
        try:
            return worker.run(fn, calls)
        finally:
            self._idle.put(worker)

    def map(self, fn: Callable, arg_tuples: Sequence[Sequence], timeouts_s: Sequence[float]) -> list[Outcome]:
        """fn(*args) for each args, the i-th under a CPU-time limit of timeouts_s[i]."""
        calls = list(zip(arg_tuples, timeouts_s))
        if _inline():
            return [_call(fn, args, cpu_s) for args, cpu_s in calls]
        size = max(1, math.ceil(len(calls) / (self.size * CHUNKS_PER_WORKER)))
        chunks = [calls[i:i + size] for i in range(0, len(calls), size)]
        with ThreadPoolExecutor(self.size) as threads:
            return [o for done in threads.map(lambda chunk: self._run_chunk(fn, chunk), chunks) for o in done]


def shared_pool() -> WorkerPool:
    global _pool
    with _shared_lock:
        if _pool is None:
            _pool = WorkerPool(POOL_WORKERS)
        return _pool


def _forget_inherited_workers() -> None:
    """In a forked child, the workers and their pipes belong to the parent: close the child's copies of
    the pipe ends and start afresh, so the child forks workers of its own when it needs them."""
    global _shared_worker, _pool, _shared_lock, _start_lock
    for worker in _all_workers:
        if worker._conn is not None:
            worker._conn.close()
    _all_workers.clear()
    _shared_worker = _pool = None
    _shared_lock = threading.Lock()  # another thread may have held it at the fork
    _start_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_inherited_workers)


STOP_HOOKS: list[Callable[[], None]] = []  # other things a process keeps for reuse (sandbox harnesses)


@atexit.register
def _stop_all() -> None:
    for worker in _all_workers:
        worker.stop()
    for hook in STOP_HOOKS:
        hook()
