"""GRAPE's scoring split across ranks: two processes (gloo, CPU) select exactly what one process selects, and
each rank scored a share of the pool. Fast: this test process is rank 0 and one child is rank 1. Slow: the
select stage launched by `posttrain run` under torchrun with two processes."""
import json
import pickle
import subprocess
import sys
from datetime import timedelta

import pytest

from conftest import write_recipe
from posttrain import cluster, hf, schema
from posttrain.data import read_rows, write_rows
from posttrain.recipe import load
from posttrain.runner import run
from posttrain.stage import Context
from posttrain.stages.select import Select, SelectConfig
from posttrain.worlds import tinyworld

RANK_1 = """
import pickle, sys
from datetime import timedelta
import torch.distributed as dist
from posttrain.stages.select import Select
cfg, ctx = pickle.load(open(sys.argv[1], "rb"))
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=1, world_size=2,
                        timeout=timedelta(seconds=120))
assert Select().run(cfg, ctx) == {}  # a follower scores what rank 0 sends and writes nothing
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """(candidate file, tiny model folder): 12 prompts x 4 candidates."""
    root = tmp_path_factory.mktemp("pool")
    tok = tinyworld.build_tokenizer()
    hf.save_model(tinyworld.build_model(tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=64, seed=0), tok, root / "model")
    write_rows(root / "candidates.jsonl", tinyworld.sft_candidate_rows(12, seed=3, mix={"arith": 1.0}))  # 4 teachers each
    return root / "candidates.jsonl", root / "model"


def assert_same_selection(one, two):
    assert read_rows(two / "data.jsonl") == read_rows(one / "data.jsonl")
    audit_one, audit_two = read_rows(one / "audit.jsonl"), read_rows(two / "audit.jsonl")
    assert [r["chosen"] for r in audit_two] == [r["chosen"] for r in audit_one]
    for a, b in zip(audit_one, audit_two):
        assert max(abs(x - y) for x, y in zip(a["scores"], b["scores"])) < 1e-5
    # the score log, kept by rank 0 alone, holds every row once, in order
    assert [r["index"] for r in read_rows(two / "scores.jsonl")] == list(range(12))


def select(cfg, out):
    out.mkdir()
    return Select().run(cfg, Context("pick", out, out.parent, Select.outputs, {}, "auto"))


def test_two_processes_select_what_one_process_selects(pool, tmp_path):
    import torch.distributed as dist

    problems = []
    cfg = schema.build(SelectConfig, {"data": str(pool[0]), "method": "grape", "model": str(pool[1]),
                                      "scoring": {"chunk_rows": 5, "batch_size": 3}}, "", problems, lambda s, o: "no refs")
    assert problems == []
    job, port = tmp_path / "job.pkl", cluster.free_port()
    job.write_bytes(pickle.dumps((cfg, Context("pick", tmp_path / "unused", tmp_path, Select.outputs, {}, "auto"))))
    child = subprocess.Popen([sys.executable, "-c", RANK_1, str(job), str(port)])
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2,
                                timeout=timedelta(seconds=120))
        try:
            metrics = select(cfg, tmp_path / "two")
        finally:
            dist.destroy_process_group()
        assert child.wait(timeout=120) == 0
    finally:
        child.kill()
    # 12 prompts x 4 candidates in chunks of 5, 5 and 2 prompts: 10 + 10 + 4 sequences to each rank
    assert metrics["scored_per_rank"] == [24, 24]
    assert not (tmp_path / "unused").exists()
    assert "scored_per_rank" not in select(cfg, tmp_path / "one")
    assert_same_selection(tmp_path / "one", tmp_path / "two")


RECIPE = """
name: ranks
stages:
  pick:
    kind: select
    data: DATA
    method: grape
    model: MODEL
    scoring: {chunk_rows: 5, batch_size: 3}
"""


@pytest.mark.slow  # 35 s: torchrun and two workers start up
def test_a_launched_select_stage_selects_what_one_process_selects(pool, tmp_path):
    recipe = write_recipe(tmp_path, RECIPE.replace("DATA", str(pool[0])).replace("MODEL", str(pool[1])))
    run(load(recipe), tmp_path / "one", echo=lambda m: None)
    run(load(recipe, ["stages.pick.launcher.type=torchrun", "stages.pick.launcher.num_processes=2"]), tmp_path / "two",
        echo=lambda m: None)
    manifest = json.loads((tmp_path / "two" / "pick" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["distributed"]["world_size"] == 2
    assert manifest["metrics"]["scored_per_rank"] == [24, 24]
    assert_same_selection(tmp_path / "one" / "pick", tmp_path / "two" / "pick")
