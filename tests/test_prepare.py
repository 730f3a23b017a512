"""Training data is prepared once per stage, not per rank: two ranks (two processes, gloo on CPU, as two
nodes would be) run the SFT and DPO stages' own data preparation on one stage folder. Only rank 0 reads and
converts the source rows and writes the Arrow copy; rank 1 reads that copy after the barrier. SFT's
truncation count is tokenised a batch at a time."""
import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import write_mini_files
from posttrain.worlds import tinyworld
from posttrain.prepare import prepared_dataset
from posttrain.stages.sft import _count_truncated

RANK = r'''
import json, sys
from pathlib import Path

import posttrain.stages.dpo as dpo
import posttrain.stages.sft as sft
from posttrain import hf
from posttrain.launch import process_group
from posttrain.schema import build
from posttrain.stage import STAGES, Context

root, rank = Path(sys.argv[1]), process_group(2).process_index  # as a launched worker does
converted = []  # every source file this rank read and converted
for module in (dpo, sft):
    real = module.convert_rows
    module.convert_rows = lambda path, *a, real=real: converted.append(Path(path).name) or real(path, *a)
out = {}
for kind, raw in (("sft", {"model": str(root / "tok"), "data": sys.argv[2], "max_length": 40}),
                  ("dpo", {"model": str(root / "tok"), "data": sys.argv[3]})):
    cfg = build(STAGES[kind].Config, raw, kind, [], None)
    ctx = Context(kind, root / kind, root, STAGES[kind].outputs)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    args = (hf.load_tokenizer(str(root / "tok")),) if kind == "sft" else ()
    dataset, info = getattr(sft if kind == "sft" else dpo, "_dataset")(cfg, ctx, *args)
    out[kind] = {"rows": len(dataset), "first": dataset[0], "info": info}
(root / f"rank{rank}.json").write_text(json.dumps({"converted": converted, **out}, default=str))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 15 s: two processes import torch, datasets and transformers; the cheap check is below
def test_two_ranks_prepare_the_data_once_and_read_the_same_copy(tmp_path):
    sft_file, pref_file = write_mini_files(tmp_path)
    tinyworld.build_tokenizer().save_pretrained(tmp_path / "tok")
    (tmp_path / "rank.py").write_text(RANK)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "rank.py"), str(tmp_path), str(sft_file), str(pref_file)],
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert sorted(rank0["converted"]) == sorted([sft_file.name, pref_file.name])  # rank 0 read each source once
    assert rank1["converted"] == [], rank1["converted"]  # rank 1 read none: it memory-mapped rank 0's copy
    for kind in ("sft", "dpo"):
        assert rank0[kind] == rank1[kind] and rank0[kind]["rows"] > 0
    assert rank0["sft"]["info"]["truncated"] > 0  # max_length 40 cuts some tiny-world chats
    assert not list(tmp_path.glob("*/*.partial"))  # the copy was renamed into place


def test_a_rank_other_than_the_main_process_builds_nothing_and_reads_after_the_barrier(tmp_path, monkeypatch):
    """In one process: rank 1 calls first; its barrier is where rank 0 builds and writes the copy."""
    import accelerate

    built, role = [], ["rank1"]

    def build():
        built.append(role[0])
        return [{"x": 1}, {"x": 2}], {"skipped_rows": 0}

    def rank0_finishes():
        role[0] = "rank0"
        monkeypatch.setattr(accelerate, "PartialState", lambda: SimpleNamespace(is_main_process=True,
                                                                                wait_for_everyone=lambda: None))
        prepared_dataset(tmp_path / "dataset", build)

    monkeypatch.setattr(accelerate, "PartialState", lambda: SimpleNamespace(is_main_process=False,
                                                                            wait_for_everyone=rank0_finishes))
    dataset, info = prepared_dataset(tmp_path / "dataset", build)
    assert built == ["rank0"] and dataset["x"] == [1, 2] and info == {"skipped_rows": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]  # renamed into place, no .partial left


def test_the_truncation_count_is_tokenised_a_batch_at_a_time():
    tokenizer = tinyworld.build_tokenizer()
    rows = [{"messages": [{"role": "user", "content": "x" * (i % 7)}, {"role": "assistant", "content": "y"}]}
            for i in range(25)]
    texts = tokenizer.apply_chat_template([r["messages"] for r in rows], tokenize=False)
    whole = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) > 12 for t in texts)
    sizes, call = [], type(tokenizer).__call__

    class Recording(type(tokenizer)):
        def __call__(self, texts, **kw):
            sizes.append(len(texts))
            return call(self, texts, **kw)

    tokenizer.__class__ = Recording
    assert _count_truncated(rows, tokenizer, 12, batch=10) == whole > 0
    assert sizes == [10, 10, 5]
