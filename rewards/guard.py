"""Hard wall-clock limits for verifier calls: persistent forked worker processes.

A worker runs `fn(*args)` and sends back an `Outcome`. When it overruns its limit it is killed and a
fresh one is forked for the next call, so a pathological completion (a sympy expression that never
simplifies, a regex that backtracks forever, a C-level big-integer power) costs one time limit and
nothing more. Signals cannot give that guarantee: math-verify's own `signal.alarm` timeouts only work in
a main thread, and no signal interrupts a long C call. Each worker also gets an address-space limit so a
memory bomb raises MemoryError in the worker instead of taking the trainer down.

Workers are forked (not spawned) so they start in milliseconds with the caller's modules already
imported; they run only verifier code, never torch.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import queue
import resource
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from posttrain.rewards.core import RowError

MEMORY_HEADROOM_BYTES = 2 << 30  # address space a worker may add on top of what it inherits
POOL_WORKERS = min(2, os.cpu_count() or 1)
_CONTEXT = multiprocessing.get_context("fork")
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


def _call(fn: Callable, args: Sequence) -> Outcome:
    try:
        return Outcome("ok", fn(*args))
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


def _serve(conn, parent_end) -> None:
    global _in_worker
    _in_worker = True
    # Drop the inherited parent end of our pipe (the others went at fork), so when the parent dies recv() sees EOF.
    parent_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
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
            fn, args = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        outcome = _call(fn, args)
        try:
            conn.send(outcome)
        except Exception as e:  # noqa: BLE001 - an unpicklable result must not kill the worker
            conn.send(Outcome("error", message=f"result could not be sent back: {type(e).__name__}: {e}"))


class Worker:
    """One forked worker process, restarted after a timeout or crash."""

    def __init__(self) -> None:
        self._proc = None
        self._conn = None
        _all_workers.append(self)

    def _start(self) -> None:
        parent_conn, child_conn = _CONTEXT.Pipe()
        self._proc = _CONTEXT.Process(target=_serve, args=(child_conn, parent_conn), daemon=True,
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

    def run(self, fn: Callable, args: Sequence, timeout_s: float) -> Outcome:
        if self._proc is None or not self._proc.is_alive():
            self.stop()
            self._start()
        try:
            self._conn.send((fn, args))
        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable argument
            return Outcome("error", message=f"could not send the call to the worker: {type(e).__name__}: {e}")
        try:
            if not self._conn.poll(timeout_s):
                self.stop()
                return Outcome("timeout", message=f"no result within {timeout_s:g}s (worker killed)")
            return self._conn.recv()
        except (EOFError, OSError):
            code = self._proc.exitcode if self._proc is not None else None
            self.stop()
            return Outcome("crashed", message=f"worker process died (exit code {code})")
        except BaseException:
            self.stop()  # interrupted mid-call: its late answer must never be read as the next one's
            raise


_all_workers: list[Worker] = []
_shared_worker: Worker | None = None
_shared_lock = threading.Lock()
_pool: "WorkerPool | None" = None


def run_guarded(fn: Callable, args: Sequence, timeout_s: float) -> Outcome:
    """`fn(*args)` under a hard time limit. Inside a worker (or a daemon process, which may not fork
    children) it runs inline: the enclosing worker's limit applies."""
    global _shared_worker
    if _in_worker or multiprocessing.current_process().daemon:
        return _call(fn, args)
    with _shared_lock:
        if _shared_worker is None:
            _shared_worker = Worker()
        return _shared_worker.run(fn, args, timeout_s)


class WorkerPool:
    """`size` workers fed by as many threads; `map` keeps input order."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: queue.Queue[Worker] = queue.Queue()
        for _ in range(size):
            self._idle.put(Worker())

    def _run_one(self, fn: Callable, args: Sequence, timeout_s: float) -> Outcome:
        worker = self._idle.get()
        try:
            return worker.run(fn, args, timeout_s)
        finally:
            self._idle.put(worker)

    def map(self, fn: Callable, arg_tuples: Sequence[Sequence], timeouts_s: Sequence[float]) -> list[Outcome]:
        """fn(*args) for each args, the i-th under timeouts_s[i]."""
        if _in_worker or multiprocessing.current_process().daemon:
            return [_call(fn, args) for args in arg_tuples]
        with ThreadPoolExecutor(self.size) as threads:
            return list(threads.map(lambda args, limit: self._run_one(fn, args, limit), arg_tuples, timeouts_s))


def shared_pool() -> WorkerPool:
    global _pool
    with _shared_lock:
        if _pool is None:
            _pool = WorkerPool(POOL_WORKERS)
        return _pool


def _forget_inherited_workers() -> None:
    """In a forked child, the workers and their pipes belong to the parent: close the child's copies of
    the pipe ends and start afresh, so the child forks workers of its own when it needs them."""
    global _shared_worker, _pool, _shared_lock
    for worker in _all_workers:
        if worker._conn is not None:
            worker._conn.close()
    _all_workers.clear()
    _shared_worker = _pool = None
    _shared_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_forget_inherited_workers)


@atexit.register
def _stop_all() -> None:
    for worker in _all_workers:
        worker.stop()
