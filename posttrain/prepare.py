"""A training stage's rows, prepared once per stage however many ranks and nodes run it.

The main process (global rank 0) converts the rows and writes an Arrow copy into the stage folder, atomically
(a `.partial` folder renamed into place); every other rank waits at a barrier and then memory-maps that copy,
so no rank holds the rows as Python objects but rank 0 while it builds them, and nobody writes into a folder
that others are reading. TRL's tokenisation then caches beside the copy, once (its main_process_first), and a
resume reuses both. The process group is the one the worker created with the recipe's timeout.
"""
import json
import shutil
from pathlib import Path
from typing import Callable

from posttrain.data import write_json

INFO = "prepared.json"  # written last: a copy without it is incomplete


def prepared_dataset(folder: Path, build: Callable[[], tuple[list[dict], dict]]):
    """(dataset, info) on every rank. build() -> (rows, info) runs on the main process only, and only when
    `folder` holds no complete copy yet; `info` (JSON: counts, skipped rows...) is kept beside the rows."""
    from accelerate import PartialState
    from datasets import Dataset, load_from_disk

    state = PartialState()
    if state.is_main_process and not (folder / INFO).exists():
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        rows, info = build()
        Dataset.from_list(rows).save_to_disk(str(tmp))
        write_json(tmp / INFO, info)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    state.wait_for_everyone()
    return load_from_disk(str(folder)), json.loads((Path(folder) / INFO).read_text())
