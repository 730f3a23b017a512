"""FSDP2 and TRL's async GRPO: which combinations validation lets through, and what reaches the trainers.
Neither trains on CPU (accelerate applies FSDP to multi-GPU runs only, shown below; async GRPO needs CUDA, a
vLLM server and a FlashAttention-3 kernel): docs/cluster.md says how to run them on GPUs."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import posttrain.stages  # noqa: F401 (registers the stages)
from posttrain.schema import build
from posttrain.stage import STAGES
from posttrain.training import Launcher, TrainArgs, check_launcher, trl_config

FSDP2 = {"type": "accelerate", "num_processes": 2, "distributed": "fsdp2"}
ASYNC = {"async_generation": {}, "vllm": {"mode": "server"}, "launcher": FSDP2}


@pytest.fixture
def gpus_and_kernels(monkeypatch):
    """What a GPU machine with TRL's async extras installed answers (vLLM, kernels, CUDA)."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: SimpleNamespace() if name in ("vllm", "kernels") else find_spec(name, *a))


def problems(raw: dict) -> list[str]:
    stage, found = STAGES["rlvr"](), []
    cfg = build(stage.Config, {"model": "m", "data": "hf:org/rl", **raw}, "rlvr", found, lambda s, o: "no refs")
    assert not found, found
    return [key for key, _ in stage.check(cfg)]


@pytest.mark.parametrize("raw, expected", [
    (ASYNC, []),
    ({**ASYNC, "launcher": {"type": "torchrun", "num_processes": 4, "distributed": "fsdp2"}}, []),
    ({**ASYNC, "launcher": {}}, []),  # one process: nothing to shard
    ({**ASYNC, "launcher": {**FSDP2, "distributed": "ddp", "deepspeed": "zero3"}}, ["launcher.deepspeed"]),
    ({**ASYNC, "launcher": {**FSDP2, "deepspeed": "zero2"}}, ["launcher.distributed", "launcher.deepspeed"]),
    ({**ASYNC, "launcher": {**FSDP2, "distributed": "ddp"}}, ["launcher.distributed"]),
    ({**ASYNC, "vllm": {"mode": "colocate"}}, ["vllm.mode"]),
    ({**ASYNC, "vllm": {"mode": "none"}}, ["vllm.mode"]),
    ({**ASYNC, "beta": 0.05, "loss_type": "grpo", "num_iterations": 2}, ["loss_type", "beta", "num_iterations"]),
    ({**ASYNC, "tools": {"python": {}}}, ["tools"]),
    ({"launcher": FSDP2}, []),  # FSDP2 without async: plain GRPO, sharded
    ({"launcher": {"distributed": "fsdp2"}}, ["launcher.distributed"]),  # one process in this one
    ({"launcher": {**FSDP2, "num_processes": 1}}, ["launcher.distributed"]),
])
def test_which_combinations_validate(gpus_and_kernels, raw, expected):
    assert problems(raw) == expected


def test_without_cuda_or_kernels_the_message_says_so(monkeypatch):
    find_spec, present = importlib.util.find_spec, {"vllm": SimpleNamespace(), "kernels": None}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: present[name] if name in present else find_spec(name, *a))
    assert problems(ASYNC) == ["launcher.distributed", "async_generation"]
    message = dict(check_launcher(Launcher(**FSDP2)))["launcher.distributed"]
    assert "needs CUDA GPUs" in message


def test_fsdp2_reaches_the_trainer_and_not_elsewhere(tmp_path):
    from trl import GRPOConfig

    ctx = SimpleNamespace(checkpoints_dir=Path(tmp_path))
    args = trl_config(GRPOConfig, TrainArgs(), ctx, Launcher(**FSDP2))
    assert args.fsdp_plugin_args["fsdp_version"] == 2
    assert args.fsdp_plugin_args["state_dict_type"] == "FULL_STATE_DICT"
    assert trl_config(GRPOConfig, TrainArgs(), ctx, Launcher()).fsdp_plugin_args is None
    # set by posttrain, so a recipe's train.trl_args may not set them behind the launcher's back
    assert problems({"train": {"trl_args": {"fsdp": True}}}) == ["train.trl_args.fsdp"]


def test_async_trainer_comes_from_trl_where_it_is_stable(monkeypatch):
    import trl

    from posttrain.stages.rlvr.async_gen import async_classes

    if not hasattr(trl, "AsyncGRPOTrainer"):  # TRL before 1.18: only the experimental path has it
        from trl.experimental.async_grpo import AsyncGRPOConfig, AsyncGRPOTrainer

        assert async_classes() == (AsyncGRPOConfig, AsyncGRPOTrainer)
    stable = type("AsyncGRPOConfig", (), {}), type("AsyncGRPOTrainer", (), {})
    monkeypatch.setattr(trl, "AsyncGRPOConfig", stable[0], raising=False)
    monkeypatch.setattr(trl, "AsyncGRPOTrainer", stable[1], raising=False)
    assert async_classes() == stable


def test_async_config_takes_the_recipe_keys(tmp_path):
    from posttrain.stages.rlvr.async_gen import async_args, async_classes, reward_terms

    AsyncGRPOConfig = async_classes()[0]

    stage, found = STAGES["rlvr"](), []
    cfg = build(stage.Config, {"model": "m", "data": __file__, **ASYNC, "num_generations": 4, "temperature": 0.7,
                               "vllm": {"mode": "server", "server_host": "10.0.0.2", "server_port": 8001},
                               "rewards": [{"name": "verifier"}, {"name": "length", "weight": 0.5}]},
                "rlvr", found, lambda s, o: "no refs")
    args = trl_config(AsyncGRPOConfig, cfg.train, SimpleNamespace(checkpoints_dir=Path(tmp_path)), Launcher(),
                      **async_args(cfg))
    assert (args.num_generations, args.temperature, args.vllm_server_base_url) == (4, 0.7, "http://10.0.0.2:8001")
    import pickle

    terms = pickle.loads(pickle.dumps(reward_terms(cfg, "verifier")))  # async scores in a spawned process
    assert [(t.__name__, t.verifier, t.weight) for t in terms] == [("verifier", None, 1.0), ("length", "length", 0.5)]


def test_accelerate_does_not_shard_on_cpu():
    """Why fsdp2 is refused without CUDA: accelerate keeps a CPU run unsharded even when given an FSDP plugin."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import FullyShardedDataParallelPlugin

    AcceleratorState._reset_state(True)
    try:
        accelerator = Accelerator(cpu=True, fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))
        assert accelerator.distributed_type.value != "FSDP"
    finally:
        AcceleratorState._reset_state(True)
