"""rlvr's `async_generation`: TRL's AsyncGRPOTrainer, where a vLLM server keeps generating while the trainer
trains on rollouts up to `max_staleness` weight updates old. It is imported from `trl` where TRL has made it
stable (1.18), else from trl.experimental.async_grpo (the path TRL 1.16 has; deprecated from 1.18).

What TRL 1.16's async GRPO needs, and so what validation asks for:
- a separate vLLM server (`vllm.mode: server`; the trainer syncs weights to it every `weight_sync_steps`);
- FSDP2 or one process, never DeepSpeed (`launcher.distributed: fsdp2` for several processes);
- CUDA and the `kernels` package: it packs rollouts with a FlashAttention-3 kernel fetched from the Hub;
- its own loss: clipped, token-level (posttrain's `dapo`), no KL term (`beta: 0`), one pass per rollout
  (`num_iterations: 1`), group-normalised advantages (`scale_rewards: group`); no steps_per_generation.
- reward functions that pickle (they run in a spawned worker): reward_terms.VerifiedTerm objects.
Resume is not exact under it: rollouts in flight at a checkpoint are lost (TRL sets ignore_data_skip).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from posttrain.data import DataError


@dataclass
class AsyncGeneration:
    max_staleness: int = field(default=4, metadata={"ge": 0, "help": "weight updates a rollout may lag before it is dropped"})
    weight_sync_steps: int = field(default=1, metadata={"ge": 1, "help": "training steps between weight syncs to vLLM"})
    max_inflight_tasks: int = field(default=-1, metadata={"ge": -1, "help": "-1: max_staleness x batch x processes"})


# rlvr keys AsyncGRPO has no counterpart for, and the only value they may take under it.
FIXED = {"loss_type": "dapo", "beta": 0.0, "num_iterations": 1, "scale_rewards": "group", "steps_per_generation": None,
         "mask_truncated_completions": False}


def check_async(cfg) -> list[tuple[str, str]]:
    """Which combinations work with async generation; each problem names the key to change."""
    if cfg.async_generation is None:
        return []
    launcher, problems = cfg.launcher, []
    if launcher.deepspeed:
        problems.append(("launcher.deepspeed", "TRL's async GRPO trains under FSDP2, not DeepSpeed ZeRO: remove "
                                               "launcher.deepspeed and set launcher.distributed: fsdp2"))
    elif launcher.num_processes * launcher.num_machines > 1 and launcher.distributed != "fsdp2":
        problems.append(("launcher.distributed", "async generation over several processes needs fsdp2"))
    if cfg.vllm.mode != "server":
        problems.append(("vllm.mode", "async generation runs on a vLLM server beside the trainer: set vllm.mode: "
                                      "server (colocate and the HF path cannot overlap generation with training)"))
    for key, value in FIXED.items():
        if getattr(cfg, key) != value:
            problems.append((key, f"TRL's async GRPO has no {key} but {value!r} (its loss is fixed)"))
    if cfg.tools is not None:
        problems.append(("tools", "not with async_generation yet: TRL's async worker needs module-level tool functions"))
    if cfg.eos_penalty:
        problems.append(("eos_penalty", "not with async_generation: its rewards do not see the completion ids"))
    if cfg.lora is not None:
        problems.append(("lora", "not with async_generation: TRL's async GRPO loads and trains the whole model"))
    if cfg.dynamic_sampling.enabled:
        problems.append(("dynamic_sampling.enabled", "not with async_generation: its rollout worker keeps every group"))
    for i, term in enumerate(cfg.rewards):
        if term.name == "model" or term.gate:
            problems.append((f"rewards[{i}]", "reward-model and gated terms are not with async_generation yet: its "
                                              "rewards run in a spawned worker as plain verifier terms"))
    if importlib.util.find_spec("kernels") is None:
        problems.append(("async_generation", "needs the `kernels` package (TRL's async GRPO packs rollouts with a "
                                             "FlashAttention-3 kernel): pip install kernels on the GPU machines"))
    return problems


def reward_terms(cfg, route_by_row: str) -> list:
    """The verifier terms, each carrying its own weight: the async trainer sums them (no reward_weights)."""
    from posttrain.stages.rlvr.reward_terms import VerifiedTerm

    return [VerifiedTerm(t.name, None if t.name == route_by_row else t.name, cfg.verified_reward, t.options,
                         cfg.reward_timeout_s, cfg.max_reward_failure_fraction, weight=t.weight) for t in cfg.rewards]


def async_args(cfg) -> dict:
    """AsyncGRPOConfig's arguments set from rlvr's own keys."""
    a = cfg.async_generation
    return dict(num_generations=cfg.num_generations, temperature=cfg.temperature,
                max_completion_length=cfg.max_completion_length, epsilon=cfg.epsilon,
                vllm_server_base_url=f"http://{cfg.vllm.server_host}:{cfg.vllm.server_port}",
                max_staleness=a.max_staleness, weight_sync_steps=a.weight_sync_steps,
                max_inflight_tasks=a.max_inflight_tasks)


def async_classes() -> tuple[type, type]:
    """(AsyncGRPOConfig, AsyncGRPOTrainer): the stable import where this TRL has it, else the experimental one."""
    try:
        from trl import AsyncGRPOConfig, AsyncGRPOTrainer
    except ImportError:
        from trl.experimental.async_grpo import AsyncGRPOConfig, AsyncGRPOTrainer
    return AsyncGRPOConfig, AsyncGRPOTrainer


def run_async(cfg, ctx, dataset, tokenizer, model_path: str, route_by_row: str) -> dict:
    """Train with AsyncGRPOTrainer (it loads the model itself, by path) and save as the other stages do."""
    import torch

    from posttrain.training import train_and_save, trl_config

    if not torch.cuda.is_available():
        raise DataError("async_generation: TRL's async GRPO needs CUDA GPUs and none is visible here")
    AsyncGRPOConfig, AsyncGRPOTrainer = async_classes()
    args = trl_config(AsyncGRPOConfig, cfg.train, ctx, cfg.launcher, **async_args(cfg))
    trainer = AsyncGRPOTrainer(model=model_path, reward_funcs=reward_terms(cfg, route_by_row), args=args,
                               train_dataset=dataset, processing_class=tokenizer)
    return train_and_save(trainer, tokenizer, ctx)
