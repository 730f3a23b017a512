"""The fork server of the kill tests: it runs `posttrain run` children that SIGKILL themselves at a chosen
point (test_faults.py lists the sites).

Forking from pytest could deadlock a child: a lock held by another of pytest's threads at the moment of the
fork (logging, the import lock, torch's or the reward workers' pools) is never released in the child. So the
children come from this server: a fresh interpreter in a session of its own, which imports torch, TRL and
posttrain once in its main thread and, before every fork, proves it holds exactly one thread
(/proc/self/task). A child then costs the stage's work, not an interpreter start. Where the proof fails, the
server says so and the client falls back to a fresh interpreter per child (`python killserver.py once`).

Protocol: one JSON request per line on stdin, {"site", "n", "stage", "recipe", "run_dir", "log"}; replies
on stdout: {"pid"} when the child is forked, then {"code"} when it has ended; {"error"} instead of a fork.
KillServer below is the client, in the test process."""
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

from children import fail_past_deadline, kill_group, run_with_deadline

CHILD_DEADLINE_S = 240  # a child runs at most the chain (about 1 min here, loaded): one past this is hung

# pyarrow's jemalloc starts a background thread at import; without it the server can stay single-threaded.
os.environ["JE_ARROW_MALLOC_CONF"] = "background_thread:false"


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def install(site: str, n: int, stage: str | None) -> None:
    """Kill at the n-th occurrence of `site`, counting only inside `stage` when one is given."""
    import posttrain.runner as runner

    state = {"count": 0, "stage": None, "timer": False}

    def hit() -> bool:
        if stage is not None and state["stage"] != stage:
            return False
        state["count"] += 1
        return state["count"] == n

    real_execute = runner._execute

    def execute(spec, *a, **k):
        state["stage"] = spec.name
        if site == "between" and hit():
            _die()
        if site == "timer" and not state["timer"] and stage in (None, spec.name):
            state["timer"] = True
            threading.Timer(n / 10, _die).start()
        return real_execute(spec, *a, **k)

    runner._execute = execute
    if site in ("data", "manifest"):
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            name = Path(dst).name
            if (name == "manifest.json" if site == "manifest" else name.endswith(".jsonl")) and hit():
                _die()
            return real_replace(src, dst, *a, **k)

        os.replace = replace
    elif site == "read":
        import posttrain.data as data

        real_iter = data._iter_jsonl

        def iter_jsonl(*a, **k):
            for located_row in real_iter(*a, **k):
                yield located_row
                if hit():
                    _die()

        data._iter_jsonl = iter_jsonl
    elif site == "step":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(lambda *_: hit() and _die())
    elif site == "checkpoint":
        from transformers.trainer_callback import TrainerState

        real_save = TrainerState.save_to_json

        def save_to_json(self, path):
            if hit():
                text = json.dumps(self.__dict__, default=str)
                Path(path).write_text(text[: len(text) // 2])
                _die()
            return real_save(self, path)

        TrainerState.save_to_json = save_to_json
    elif site == "final":
        from transformers.trainer_callback import TrainerState

        real_save = TrainerState.save_to_json

        def save_final(self, path):
            real_save(self, path)
            if self.global_step >= self.max_steps and hit():
                _die()

        TrainerState.save_to_json = save_final
    elif site == "hang":  # a child that never ends, as a deadlocked one would: for the deadline's own test
        print("hanging on purpose", flush=True)
        threading.Event().wait()


def child(request: dict) -> None:
    """In the child: leave the server's session, send all output to the log (closing the server's pipes),
    install the kill site and run the real CLI; never returns."""
    code = 99
    try:
        if os.getpid() != os.getpgid(0):
            os.setsid()  # own group: the reward workers it forks die with it
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)
        install(request["site"], request["n"], request["stage"])
        from posttrain.cli import main

        stage = request["stage"]
        code = main(["run", request["recipe"], "--out", request["run_dir"], *(["--only", stage] if stage else [])])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(code or 0)


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def serve() -> None:
    import torch  # noqa: F401 - what every child needs, imported once here
    import trl  # noqa: F401
    from trl import DPOTrainer, GRPOTrainer, SFTTrainer  # noqa: F401
    from transformers.trainer_callback import TrainerState  # noqa: F401

    import posttrain.cli  # noqa: F401
    import posttrain.data  # noqa: F401
    import posttrain.rewards  # noqa: F401
    import posttrain.runner  # noqa: F401

    def reply(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    reply({"ready": threads()})
    for line in iter(sys.stdin.readline, ""):
        request = json.loads(line)
        if threads() != 1:  # another thread could hold a lock the child would inherit locked
            reply({"error": f"the server holds {threads()} threads; it forks only with one"})
            continue
        pid = os.fork()
        if pid == 0:
            child(request)
        reply({"pid": pid})
        _, status = os.waitpid(pid, 0)
        try:
            os.killpg(pid, signal.SIGKILL)  # what the child forked goes with it
        except ProcessLookupError:
            pass
        reply({"code": os.waitstatus_to_exitcode(status)})


# -- the client, in the test process ---------------------------------------------------------------------------
class KillServer:
    """The client of killserver.py, started on first use; a child past its deadline is killed with its
    process group, the server with it, and the test fails with the child's log."""

    def __init__(self, folder: Path):
        self.folder, self.proc, self.last_pid, self.forks, self.fallbacks = folder, None, None, 0, 0

    def _reply(self, deadline: float) -> dict:
        ready = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]
        line = self.proc.stdout.readline() if ready else b""
        if not ready or not line:
            raise TimeoutError("no reply" if not ready else "the server died")
        return json.loads(line)

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(self.folder / "server.log", "w"),
                                     bufsize=0, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            self._reply(time.monotonic() + CHILD_DEADLINE_S)
        except TimeoutError:
            self.stop()
            fail_past_deadline("the kill server's start", CHILD_DEADLINE_S, (self.folder / "server.log").read_text())

    def run(self, request: dict, timeout: float) -> int:
        if self.proc is None:
            self._start()
        deadline = time.monotonic() + timeout
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        reply = self._reply(deadline)
        if "error" in reply:  # not provably single-threaded: a fresh interpreter instead (seconds more per kill)
            warnings.warn(f"kill server: {reply['error']}; falling back to a fresh interpreter per child")
            self.fallbacks += 1
            cmd = [sys.executable, __file__, "once", json.dumps(request)]
            return run_with_deadline(cmd, timeout, log=Path(request["log"])).returncode
        self.forks, self.last_pid = self.forks + 1, reply["pid"]
        try:
            return self._reply(deadline)["code"]
        except BaseException as e:  # the deadline, or pytest-timeout interrupting the wait
            kill_group(reply["pid"])
            self.stop()
            if isinstance(e, TimeoutError):
                fail_past_deadline(f"the killed-run child {reply['pid']}", timeout, Path(request["log"]).read_text())
            raise

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc.pid)
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:  # once REQUEST: the fallback, this fresh interpreter is the child
        child(json.loads(sys.argv[2]))
