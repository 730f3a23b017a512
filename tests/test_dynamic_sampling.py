"""Dynamic sampling in rlvr on a tiny model that answers 7 or 3 about equally: prompts whose truth is 7 give
groups with varied rewards, prompts whose truth is 9 give all-zero groups, which must be dropped and replaced
by refill groups; a run stopped at a checkpoint resumes to the same weights; the block is validated."""
import json
import shutil

import pytest
from safetensors.torch import load_file

import posttrain.stages  # noqa: F401  (registers the stage kinds)
from posttrain.stages.rlvr import dynamic_sampling
from posttrain.schema import build
from posttrain.stage import STAGES
from test_training import run_stage, tiny_model_dir  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def sevens_or_threes(tiny_model_dir, tmp_path_factory):  # noqa: F811
    """(SFT model, RL prompts): half of the RL rows can be solved by some samples, half by none."""
    root = tmp_path_factory.mktemp("ds")
    sft_data, rl_data = root / "sft.jsonl", root / "rl.jsonl"
    sft_data.write_text("".join(json.dumps({"prompt": "Pick a number.", "completion": f"The answer is {n}."}) + "\n"
                                for n in [7, 3] * 32))
    rl_data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": "Pick a number."}],
                                           "ground_truth": truth, "verifier": "numeric"}) + "\n"
                               for truth in ["7", "9"] * 32))
    _, ctx = run_stage("sft", {"model": str(tiny_model_dir), "data": str(sft_data), "max_length": 64,
                               "train": {"learning_rate": 1e-2, "max_steps": 30, "per_device_train_batch_size": 16}},
                       root / "sft")
    return str(ctx.output("model")), str(rl_data)


def rlvr(model: str, data: str, **extra) -> dict:
    return {"model": model, "data": data, "num_generations": 4, "max_completion_length": 24,
            "dynamic_sampling": {"enabled": True, "max_refill_batches": 6},
            "train": {"learning_rate": 5e-3, "max_steps": 4, "per_device_train_batch_size": 16, "save_steps": 2,
                      "logging_steps": 1, "lr_scheduler_type": "constant"}, **extra}


def logged(ctx, key: str) -> list[float]:
    return [r[key] for r in map(json.loads, (ctx.out_dir / "metrics.jsonl").read_text().splitlines()) if key in r]


def test_all_equal_groups_are_replaced_and_resume_is_exact(sevens_or_threes, tmp_path, monkeypatch):
    batches = []
    real = dynamic_sampling.merged
    monkeypatch.setattr(dynamic_sampling, "merged", lambda *a: batches.append(real(*a)) or batches[-1])
    _, ctx = run_stage("rlvr", rlvr(*sevens_or_threes), tmp_path / "straight")
    dropped, refills = logged(ctx, "dynamic_sampling/dropped_groups"), logged(ctx, "dynamic_sampling/refill_batches")
    varied = logged(ctx, "dynamic_sampling/varied_fraction")
    assert len(dropped) == len(batches) == 4 and min(dropped) >= 1 and all(r >= 1 for r in refills[2:]), (dropped, refills)
    # The groups trained on, by TRL's own advantages: all-zero ones only where the refills ran out, and far
    # fewer than the first batches held (plain GRPO would have trained on those).
    zero_groups = [int((b["advantages"].view(4, 4).abs().amax(dim=1) == 0).sum()) for b in batches]
    assert [b["completion_ids"].shape[0] for b in batches] == [16] * 4
    assert zero_groups == [round(4 * (1 - v)) for v in varied], (zero_groups, varied)
    assert sum(zero_groups) <= 1 < sum(dropped), (zero_groups, dropped)

    # stopped after checkpoint-2: the refills of steps 3 and 4 must draw the same prompts again
    resumed = tmp_path / "resumed" / "rlvr"
    shutil.copytree(ctx.out_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-4")
    shutil.rmtree(resumed / "model")
    _, again = run_stage("rlvr", rlvr(*sevens_or_threes), tmp_path / "resumed")
    straight, after = load_file(ctx.output("model") / "model.safetensors"), load_file(again.output("model") / "model.safetensors")
    for key in straight:
        assert (straight[key] == after[key]).all(), key
    assert logged(again, "dynamic_sampling/refill_batches") == refills


def problems(raw: dict) -> list:
    found = []
    cfg = build(STAGES["rlvr"].Config, raw, "rlvr", found, None)
    return found or STAGES["rlvr"]().check(cfg)


def test_the_block_is_validated(tmp_path):
    rows = tmp_path / "rl.jsonl"
    rows.write_text('{"prompt": "x", "ground_truth": "1", "verifier": "numeric"}\n')
    base = {"model": "m", "data": str(rows), "num_generations": 4, "train": {"per_device_train_batch_size": 8}}
    assert problems({**base, "dynamic_sampling": {"enabled": True, "max_refill_batches": 2}}) == []
    assert "unknown key 'max_refills'" in problems({**base, "dynamic_sampling": {"max_refills": 2}})[0][1]
    assert problems({**base, "dynamic_sampling": {"enabled": "yes"}})[0][0] == "rlvr.dynamic_sampling.enabled"
    assert problems({**base, "dynamic_sampling": {"max_refill_batches": -1}})[0][0] == "rlvr.dynamic_sampling.max_refill_batches"
    # 6 completions per process cannot hold whole groups of 4: the groups would be split between processes
    split = {**base, "train": {"per_device_train_batch_size": 6}, "launcher": {"type": "torchrun", "num_processes": 2}}
    assert [p[0] for p in problems({**split, "dynamic_sampling": {"enabled": True}})] == ["dynamic_sampling.enabled"]
    assert problems(split) == []
