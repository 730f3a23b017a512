"""Eval results reused per (model, task) across re-runs of an eval stage. Changing one evaluated model (say
only RLVR) changes the eval stage's fingerprint, and the stage re-runs; without this it would re-evaluate
every model. Each (model, task) samples file is kept under <run folder>/.eval_cache/ by a key that covers
what decides it: the model's content (a local folder by its files' hashes, a hub model by the commit its
revision resolves to), the task's resolved options and data files, the backend, seed and batch size (which
can move greedy outputs by padding). Anything else changed, and the pair is evaluated again."""
import hashlib
import json
import os
import shutil
from pathlib import Path

from posttrain import hf
from posttrain.eval.lm_eval_backend import is_lm_eval
from posttrain.eval.suite import TaskRun
from posttrain.eval.tasks import TASKS
from posttrain.store import HashCache

CACHE_DIR = ".eval_cache"


class ResultCache:
    def __init__(self, run_dir: Path, backend: str, seed: int, batch_size: int):
        self.dir = Path(run_dir) / CACHE_DIR
        # the planner's hash cache: it hashed these models moments ago, so nothing is read again
        self.hashes = HashCache(Path(run_dir) / ".hashes.json")
        self.settings = {"backend": backend, "seed": seed, "batch_size": batch_size}

    def key(self, model_path: str, run: TaskRun) -> str:
        model = self.hashes.tree(Path(model_path)) if Path(model_path).exists() else f"hub:{hf.hub_commit(model_path)}"
        files = [] if is_lm_eval(run.name) else [self.hashes.tree(f) for f in TASKS[run.name].files(run.source, run.shots)]
        payload = {"model": model, "task": run.name, "options": run.options, "files": files, **self.settings}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def restore(self, key: str, samples: Path) -> bool:
        """Put the cached samples for `key` at `samples` (absent: nothing cached, or already there)."""
        cached = self.dir / f"{key}.jsonl"
        if samples.exists() or not cached.exists():
            return False
        samples.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(cached, samples)
        return True

    def keep(self, key: str, samples: Path) -> None:
        cached = self.dir / f"{key}.jsonl"
        if samples.exists() and not cached.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            _link_or_copy(samples, cached)


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no space) where the filesystem allows, else a copy; renamed into place whole."""
    tmp = dst.with_name(dst.name + f".tmp.{os.getpid()}")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
