"""Reading and writing row files. Every bad row is an error that names the file and line, or,
with on_bad_rows="skip", is counted so the count can go in the manifest."""
from __future__ import annotations

import gzip
import itertools
import json
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterable, Iterator

# Beside a source checkout (the repository's ../shared/data); a wheel install sets POSTTRAIN_SHARED_DATA.
CHECKOUT_SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MAX_LINE_BYTES = 64 * 1024 * 1024
READ_CHUNK = 1024 * 1024
TEMP_SUFFIX = ".posttrain-tmp"  # atomic writes' temp files: distinct, so stale ones can be found


class DataError(Exception):
    """A data file problem a user can fix: the message names the file and line."""


@dataclass
class ReadStats:
    rows: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def skip(self, where: str, why: str) -> None:
        self.skipped += 1
        if len(self.skipped_examples) < 5:
            self.skipped_examples.append(f"{where}: {why}")


def _open_text(path: Path):
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return raw


def _lines(f: IO[bytes]) -> Iterator[tuple[bytes | None, int]]:
    """(line, size) per line; a line over MAX_LINE_BYTES comes as (None, size), read past in 1 MB chunks
    so memory stays bounded by the limit, not by the longest line."""
    while chunk := f.readline(READ_CHUNK):
        chunks, size = [chunk], len(chunk)
        while not chunk.endswith(b"\n") and (chunk := f.readline(READ_CHUNK)):
            size += len(chunk)
            if size <= MAX_LINE_BYTES:
                chunks.append(chunk)
            else:
                chunks.clear()
        yield (b"".join(chunks) if size <= MAX_LINE_BYTES else None), size


def _iter_jsonl(path: Path, stats: ReadStats, on_bad_rows: str) -> Iterator[tuple[str, dict]]:
    with _open_text(path) as f:
        for lineno, (raw, size) in enumerate(_lines(f), 1):
            where = f"{path}:{lineno}"
            try:
                if raw is None:
                    raise ValueError(f"line is {size // (1024 * 1024)} MB, over the {MAX_LINE_BYTES // (1024 * 1024)} MB limit")
                text = raw.decode("utf-8")
                if not text.strip():
                    continue
                row = json.loads(text)
                if not isinstance(row, dict):
                    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
            except (UnicodeDecodeError, ValueError) as e:
                if on_bad_rows == "skip":
                    stats.skip(where, str(e)[:200])
                    continue
                raise DataError(f"{where}: malformed row: {str(e)[:300]} (set on_bad_rows: skip to skip and count bad rows)") from None
            stats.rows += 1
            yield where, row


def located_rows(path: str | Path, on_bad_rows: str = "error", stats: ReadStats | None = None) -> Iterator[tuple[str, dict]]:
    """Stream (where, row) from jsonl / json / parquet (optionally .gz), or a hub id
    `hf:org/name[@revision][:config][:split]`; `where` names the row's file and line, for errors about its fields."""
    stats = stats if stats is not None else ReadStats()
    spec = str(path)
    if spec.startswith("hf:"):
        yield from _iter_hub(spec[3:], stats)
        return
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    try:
        yield from _iter_local(path, stats, on_bad_rows)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # a truncated or corrupt .gz: no line to point at
        raise DataError(f"{path}: the compressed data is truncated or corrupt after {stats.rows} rows ({e}); "
                        "re-download or re-compress the file") from None


def _iter_local(path: Path, stats: ReadStats, on_bad_rows: str) -> Iterator[tuple[str, dict]]:
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    if name.endswith(".jsonl"):
        yield from _iter_jsonl(path, stats, on_bad_rows)
    elif name.endswith(".json"):
        with _open_text(path) as f:
            try:
                data = json.loads(f.read().decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise DataError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                if on_bad_rows == "skip":
                    stats.skip(f"{path}[{i}]", "not an object")
                    continue
                raise DataError(f"{path}[{i}]: expected a JSON object, got {type(row).__name__}")
            stats.rows += 1
            yield f"{path}[{i}]", row
    elif name.endswith(".parquet"):
        yield from _iter_parquet(path, stats)
    else:
        raise DataError(f"{path}: unknown file type (use .jsonl, .json or .parquet, optionally .gz)")


def _iter_parquet(path: Path, stats: ReadStats) -> Iterator[tuple[str, dict]]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(path).iter_batches():
            for row in batch.to_pylist():
                stats.rows += 1
                yield f"{path}: row {stats.rows}", row
    except pyarrow.ArrowException as e:  # e.g. a text file named .parquet, or a truncated one
        raise DataError(f"{path}: not a readable Parquet file ({str(e)[:200]})") from None


def _iter_hub(spec: str, stats: ReadStats) -> Iterator[tuple[str, dict]]:
    """`org/name[@revision][:config]:split`, e.g. openai/gsm8k@main:main:test."""
    import datasets

    from posttrain import hf

    name, revision, config, split = hf.hub_dataset(spec)
    try:
        ds = datasets.load_dataset(name, config, split=split, revision=revision, streaming=True)
    except Exception as e:  # no network here: say what to do instead
        raise DataError(f"hf:{spec}: could not load from the hub ({type(e).__name__}: {str(e)[:200]}); "
                        "download it where a network exists and point the recipe at the local file") from None
    for row in ds:
        stats.rows += 1
        yield f"hf:{spec}: row {stats.rows}", dict(row)


def iter_rows(path: str | Path, on_bad_rows: str = "error", stats: ReadStats | None = None) -> Iterator[dict]:
    """The rows of `located_rows`, without where they came from."""
    for _, row in located_rows(path, on_bad_rows, stats):
        yield row


def read_rows(path: str | Path, on_bad_rows: str = "error", stats: ReadStats | None = None) -> list[dict]:
    return list(iter_rows(path, on_bad_rows, stats))


@contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[str]]:
    """A text file that appears at `path` only once fully written and synced (temp file + rename),
    so a killed process never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes it 0600; the file should read like its neighbours
        with os.fdopen(fd, "w") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only set it)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def follow_umask(folder: Path) -> None:
    """Give every file and folder under `folder` at least the permissions the umask allows, as a plain open()
    would: libraries that write through temp files (safetensors' model.safetensors) leave them 0600, which
    colleagues sharing a run folder cannot read. Never removes a permission."""
    allowed = ~umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o7777
        want = mode | ((0o777 if path.is_dir() else 0o666) & allowed)
        if want != mode:
            os.chmod(path, want)


def remove_stale_temp_files(folder: Path, recursive: bool = True) -> None:
    """Delete the temp files of atomic writes that a killed process left behind. Only safe under the run
    lock, when no other writer can be mid-write."""
    for tmp in (folder.rglob if recursive else folder.glob)(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, default=str)


def convert_rows(path: str, convert: Callable[[dict, str], dict], on_bad_rows: str, stats: ReadStats) -> list[dict]:
    """Read `path` and convert each row; a row that does not convert is an error naming the file and
    line, or with on_bad_rows="skip" is counted in `stats`."""
    out = []
    for where, row in located_rows(path, on_bad_rows, stats):
        try:
            out.append(convert(row, where))
        except DataError as e:
            if on_bad_rows != "skip":
                raise
            stats.skip(where, str(e))
    if not out:
        raise DataError(f"{path}: no usable rows" + (f" ({stats.skipped} skipped, e.g. {stats.skipped_examples[0]})"
                                                     if stats.skipped else ""))
    return out


def first_rows_problem(path: str, convert: Callable[[dict, str], Any], rows: int = 20) -> str | None:
    """Validation's cheap look at a local data file: read and convert its first rows. The first problem
    (naming file:line), or None; other stages' outputs and hub ids are read only at run time."""
    return first_rows(path, convert, rows)[1]


def first_rows(path: str, convert: Callable[[dict, str], Any], rows: int = 20) -> tuple[list[tuple[str, Any]], str | None]:
    """(where, converted row) for the first rows of a local data file, and the first problem (None if none); ([],
    None) for what validation does not read (another stage's output, a hub id)."""
    from posttrain.stage import is_ref

    if not isinstance(path, (str, Path)) or is_ref(path) or str(path).startswith(("hf:", "builtin:")) \
            or not Path(path).is_file():
        return [], None  # a value of the wrong type is reported by the schema check, not here
    read = []
    try:
        for where, row in itertools.islice(located_rows(path), rows):
            read.append((where, convert(row, where)))
    except DataError as e:
        return read, str(e)
    return read, None if read else f"{path}: no rows (only blank lines)"


def shared_data_dir() -> Path:
    """The shared datasets folder: $POSTTRAIN_SHARED_DATA, else ../shared/data beside a source checkout; a
    DataError saying how to point at it when it is not there."""
    env = os.environ.get("POSTTRAIN_SHARED_DATA")
    folder = Path(env) if env else CHECKOUT_SHARED_DATA
    if not folder.is_dir():
        where = "POSTTRAIN_SHARED_DATA names" if env else "posttrain looks for the shared datasets at"
        raise DataError(f"{where} {folder}, which is not a folder; set POSTTRAIN_SHARED_DATA=/path/to/shared/data "
                        "(a wheel install has no checkout to find it beside)")
    return folder


def shared_file(relative: str) -> Path:
    """A file in the shared datasets folder, with a clear error when it is absent."""
    folder = shared_data_dir()
    path = folder / relative
    if not path.exists():
        raise DataError(f"{path}: not found in the shared datasets folder {folder} (set POSTTRAIN_SHARED_DATA "
                        "to point elsewhere)")
    return path
