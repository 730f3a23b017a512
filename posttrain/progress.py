"""Quiet `posttrain run`: while a stage runs, everything it prints (progress bars, TRL's log dicts, warnings,
launched child processes) goes to <run>/<stage>/stage.log, and a terminal shows one live line per stage: its
progress, read from the newest progress bar in that log, and its latest loss. `--verbose` prints it all instead."""
import os
import re
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

# tqdm's "  45%|####      | 90/200 [00:10<00:12, 8.20it/s]" and TRL's "{'loss': '0.512', ...}"
_BAR = re.compile(r"(\d+)/(\d+) \[")
_LOSS = re.compile(r"'loss': '?(-?[\d.]+(?:e-?\d+)?)")
LOG_NAME = "stage.log"


def parse_progress(text: str) -> tuple[int | None, int | None, float | None]:
    """(done, total, loss) from the newest progress bar and loss in a chunk of log; None where there is none.
    One-step bars (writing a checkpoint's single shard) would hide the training bar around them: skipped."""
    bars = [(int(d), int(t)) for d, t in _BAR.findall(text) if int(t) > 1]
    losses = _LOSS.findall(text)
    done, total = bars[-1] if bars else (None, None)
    return done, total, float(losses[-1]) if losses else None


def progress_text(name: str, done: int | None, total: int | None, loss: float | None) -> str:
    """The live line's text after the spinner, e.g. `[sft] 120/150 loss 0.412`."""
    parts = [f"[{name}]"]
    if total:
        parts.append(f"{done}/{total}")
    if loss is not None:
        parts.append(f"loss {loss:.4g}")
    return " ".join(parts)


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# Kinds whose `<model>/<task>` metrics are scores in [0, 1]: shown in %, as the report shows them.
PERCENT_KINDS = {"eval"}


def headline(metrics: dict, kind: str | None = None) -> str:
    """A stage's metrics in a few words, the telling ones first: `12 steps loss 4.26→3.699 rows=200`; an eval
    stage's scores in %: `base/tinyworld=0.5%`."""
    if kind in PERCENT_KINDS:
        metrics = {k: f"{100 * v:.1f}%" if "/" in k and isinstance(v, float) else v for k, v in metrics.items()}
    parts = [f"{metrics['global_step']} steps"] if "global_step" in metrics else []
    folded = {"global_step"}
    for key in metrics:
        name = key.removeprefix("first_")
        if key != name and f"final_{name}" in metrics:
            parts.append(f"{name} {_num(metrics[key])}→{_num(metrics[f'final_{name}'])}")
            folded |= {key, f"final_{name}"}
    return " ".join(parts + [f"{k}={_num(v)}" for k, v in metrics.items()
                             if k not in folded and isinstance(v, (int, float, str))])


def console_stream():
    """Where the run's own lines go: a copy of stdout made before stages redirect fd 1, or None when stdout
    has no file descriptor (the run is called in-process under a capturing test) and nothing is redirected."""
    try:
        sys.stdout.flush()
        return open(os.dup(sys.stdout.fileno()), "w", buffering=1)
    except (AttributeError, OSError, ValueError):
        return None


class _Tail(threading.Thread):
    """Reads what the stage appended to its log every half second and updates the live line."""

    def __init__(self, log: Path, name: str, status):
        super().__init__(daemon=True)
        self.log, self.name, self.status, self.stop = log, name, status, threading.Event()
        self.state: tuple = (None, None, None)

    def run(self) -> None:
        with open(self.log, errors="replace") as f:
            f.seek(0, os.SEEK_END)
            while not self.stop.wait(0.5):
                chunk = f.read()[-20000:]
                if chunk:  # keep the last known values where the new chunk has none
                    new = parse_progress(chunk)
                    self.state = (*(new[:2] if new[1] else self.state[:2]), new[2] if new[2] is not None else self.state[2])
                    self.status.update(_spinner(progress_text(self.name, *self.state)))


def _spinner(text: str):
    from rich.spinner import Spinner
    from rich.text import Text

    return Spinner("dots", Text(text))  # Text: "[sft]" is not markup


def _live_line(console, text: str):
    """A transient spinner line. Live must not redirect sys.stdout/stderr: the stage's output goes to its log."""
    from rich.live import Live

    return Live(_spinner(text), console=console, transient=True, refresh_per_second=4,
                redirect_stdout=False, redirect_stderr=False)


@contextmanager
def stage_output(name: str, stage_dir: Path, console):
    """Send fds 1 and 2 (this process and its children) to the stage's log while the stage runs; on a
    terminal, show a live status line on `console` meanwhile. On failure, the log's tail goes to the console."""
    log = stage_dir / LOG_NAME
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    _mark(fd, f"[{name}] stage started (pid {os.getpid()})")  # a resumed stage appends: each attempt is dated
    os.dup2(fd, 1), os.dup2(fd, 2)
    os.close(fd)
    live = _live_line(console, progress_text(name, None, None, None)) if console.is_terminal else None
    tail = _Tail(log, name, live) if live else None
    try:
        if live:
            live.start(), tail.start()
        yield
    except BaseException as e:
        _mark(1, f"[{name}] stage stopped: {type(e).__name__}")
        _restore(saved, live, tail)
        lines = log.read_text(errors="replace").splitlines()[-15:]
        console.print("\n".join(lines), markup=False, highlight=False, style="dim")
        console.print(f"[{name}] the stage's full output: {log}", markup=False)
        raise
    else:
        _mark(1, f"[{name}] stage finished")
        _restore(saved, live, tail)


def _mark(fd: int, text: str) -> None:
    """A dated line in the stage's log (the trainers' own lines carry no time)."""
    from datetime import datetime, timezone

    sys.stdout.flush(), sys.stderr.flush()
    os.write(fd, f"\n{datetime.now(timezone.utc).isoformat(timespec='seconds')} {text}\n".encode())


def _restore(saved: tuple[int, int], live, tail) -> None:
    sys.stdout.flush(), sys.stderr.flush()
    if tail is not None:
        tail.stop.set()
        tail.join()
        live.stop()
    for target, fd in zip((1, 2), saved):
        os.dup2(fd, target)
        os.close(fd)
