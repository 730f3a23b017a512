"""The run store: one folder per stage holding its artifacts, config.resolved.yaml and manifest.json
(written atomically and last), content hashes, fingerprints and the run lock."""
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import platform
import socket
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from posttrain import hf, packaged
from posttrain.data import DataError, write_json
from posttrain.schema import DATASET_SCHEMES
from posttrain.stage import ARTIFACT_TYPES, Dataset, Model, Report, is_ref, output_path, parse_ref

KEY_PACKAGES = ("posttrain", "torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "datasets", "vllm")
COMPLETE, RUNNING, FAILED, INTERRUPTED = "complete", "running", "failed", "interrupted"
INPUT_TYPES = tuple(ARTIFACT_TYPES.values())


class LockedError(Exception):
    pass


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def version_drift(manifest: dict | None) -> str:
    """The packages whose version differs between a stage's manifest and this environment ("" if none):
    the stage stays cached (versions are not in its fingerprint), but its numbers may not be reproduced."""
    if not manifest or "versions" not in manifest:
        return ""
    now = package_versions()
    changed = [f"{p} {v} (now {now.get(p, 'not installed')})" for p, v in sorted(manifest["versions"].items())
               if now.get(p) != v]
    return f"made with {', '.join(changed)}; not recomputed: --force to redo it" if changed else ""


def stale_stages(manifests: dict[str, dict | None]) -> dict[str, list[str]]:
    """Complete stages that were not made from what is upstream of them now -> those upstream stages: one that
    failed, was interrupted or re-ran since (its fingerprint moved), or is itself stale. `manifests`: every
    stage's current manifest (None: never ran), in run order."""
    stale: dict[str, list[str]] = {}
    for name, manifest in manifests.items():
        if manifest and manifest.get("status") == COMPLETE:
            moved = [up for up, fingerprint in manifest.get("upstream", {}).items()
                     if up in stale or (manifests.get(up) or {}).get("status") != COMPLETE
                     or manifests[up].get("fingerprint") != fingerprint]
            if moved:
                stale[name] = moved
    return stale


class HashCache:
    """sha256 of files, cached by (size, mtime) so re-planning a large run does not re-read everything."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.entries = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def file(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        stamp = [st.st_size, st.st_mtime_ns]
        cached = self.entries.get(key)
        if cached and cached[0] == stamp:
            return cached[1]
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        self.entries[key] = [stamp, digest]
        return digest

    def tree(self, path: Path) -> str:
        """Hash of a file, or of a folder's files (names and contents)."""
        if path.is_file():
            return self.file(path)
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode() + b"\0" + self.file(p).encode())
        return h.hexdigest()

    def save(self) -> None:
        if self.path.parent.exists():
            try:
                write_json(self.path, self.entries)
            except OSError:  # only a cache: a read-only or full disk must not stop `plan`
                pass


def inputs(config: Any, files: list[Path], hashes: HashCache) -> dict[str, str]:
    """What a stage reads, identified for its fingerprint: every Config value typed as an input (not stage
    references, which the upstream fingerprints cover), plus the stage's own `files`. Local files and
    folders by content; a hub model by id and the commit its revision resolves to; a hub dataset likewise,
    with its config and split."""
    found: dict[str, str] = {}
    for value in _typed_inputs(config):
        if isinstance(value, Dataset) and value.startswith("hf:"):
            name, _, rest = value[3:].partition(":")
            found[value] = f"hub:{hf.hub_commit(name, 'datasets')}" + (f":{rest}" if rest else "")
        elif isinstance(value, Dataset) and value.startswith(DATASET_SCHEMES):
            continue
        if isinstance(value, Model) and packaged.is_packaged(value):  # by the GGUF file's content
            found[value] = f"gguf:{hashes.file(packaged.gguf_file(value))}"
        elif Path(value).exists():
            found[str(Path(value))] = hashes.tree(Path(value))
        elif isinstance(value, Model):
            found[value] = f"hub:{hf.hub_commit(value)}"
    found.update((str(f), hashes.tree(f)) for f in files)
    return found


def _typed_inputs(value: Any) -> list[str]:
    """The input-typed values (Model, Dataset, ...) of a built Config, however deeply nested."""
    if dataclasses.is_dataclass(value):
        return [v for f in dataclasses.fields(value) for v in _typed_inputs(getattr(value, f.name))]
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _typed_inputs(item)]
    if isinstance(value, dict):
        return [v for item in value.values() for v in _typed_inputs(item)]
    return [value] if isinstance(value, INPUT_TYPES) and not is_ref(value) and value.strip() else []


def fingerprint(kind: str, config: dict, upstream: dict[str, str], input_hashes: dict[str, str]) -> str:
    """Covers the resolved config, upstream fingerprints and input data; not formatting or key order."""
    def swap_refs(v):  # a reference is identified by what it points at, not by the stage's name
        if isinstance(v, dict):
            return {k: swap_refs(x) for k, x in v.items()}
        if isinstance(v, list):
            return [swap_refs(x) for x in v]
        if is_ref(v):
            stage, output = parse_ref(v)
            return f"{upstream[stage]}/{output}"
        return v

    payload = {"kind": kind, "config": swap_refs(config), "inputs": sorted(input_hashes.values())}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunStore:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.hashes = HashCache(self.run_dir / ".hashes.json")
        self._lock_file = None

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def manifest(self, name: str) -> dict | None:
        try:
            return json.loads((self.stage_dir(name) / "manifest.json").read_text())
        except (OSError, ValueError):
            return None

    def write_manifest(self, name: str, manifest: dict) -> None:
        write_json(self.stage_dir(name) / "manifest.json", manifest)

    def artifact_paths(self, manifest: dict) -> dict[str, str]:
        """A manifest's artifacts (stored relative to the run folder) as usable paths."""
        return {out: str(self.run_dir / rel) for out, rel in manifest["artifacts"].items()}

    def missing_artifacts(self, manifest: dict) -> list[str]:
        """Artifacts a complete manifest lists that are gone or were changed by hand since."""
        problems = []
        for out, path in manifest.get("artifacts", {}).items():
            p = self.run_dir / path
            if not p.exists():
                problems.append(f"{out} ({path}) is missing")
            elif manifest.get("artifact_hashes", {}).get(out) not in (None, self.hashes.tree(p)):
                problems.append(f"{out} ({path}) was modified after the stage finished")
        return problems

    # -- the lock -------------------------------------------------------------
    def lock(self) -> None:
        """One `posttrain run` per run folder. A POSIX record lock is released by the kernel when its process
        dies, so a lock left by a killed run never blocks the next one; unlike flock, it is not shared with
        forked children (reward workers), which may outlive a killed parent for a moment. Only node 0 of a
        multi-node run locks: the other nodes never write here."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            f = open(self.run_dir / ".lock", "a+")
        except OSError as e:
            raise DataError(f"{self.run_dir}: cannot write to the run folder ({e.strerror}); "
                            "make it writable or choose another --out") from None
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                f.close()
                raise DataError(f"{self.run_dir}: this filesystem does not support POSIX locks (lockf: {e.strerror}), "
                                "so two runs could write the same folder at once; put --out on a filesystem with "
                                "locking (Lustre: mount with -o flock; NFS: run lockd) or a local disk") from None
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise LockedError(f"{self.run_dir} is in use by {holder}; wait for it to finish or use another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {now_iso()}")
        f.flush()
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file:
            fcntl.lockf(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


def hardware() -> dict[str, Any]:
    import torch

    info = {"host": socket.gethostname(), "cpus": os.cpu_count(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def elapsed(start: float) -> float:
    return round(time.time() - start, 3)


def final_outputs(recipe, run_dir: Path) -> dict[str, Path]:
    """Where the recipe's last model and last report are: of the last stages that have them complete and made
    from what is upstream of them now (a stage left out by --only may be stale)."""
    store = RunStore(run_dir)
    manifests = {name: store.manifest(name) for name in recipe.stages}
    stale = stale_stages(manifests)
    current = [n for n, m in manifests.items() if m and m.get("status") == COMPLETE and n not in stale]
    found = {}
    for what, kind in (("final model", Model), ("report", Report)):
        for name in reversed(current):
            out = next((o for o, t in recipe.stages[name].stage.outputs.items() if t is kind), None)
            if out and output_path(run_dir / name, out, kind).exists():
                path = output_path(run_dir / name, out, kind)
                found[what] = path / "report.html" if kind is Report and (path / "report.html").exists() else path
                break
    return found
