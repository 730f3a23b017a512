"""The vLLM-trainer log-prob mismatch. vLLM samples with its own kernels (and in colocate mode often in lower
precision), so the probability it gave a token differs from the trainer's: the completions are slightly
off-policy. TRL corrects this with an importance-sampling ratio (trainer / vLLM probability), truncated or
masked outside [clip_min, clip_max], per token or per sequence. posttrain turns it on whenever rlvr generates
with vLLM and passes every setting explicitly, so a change of TRL's defaults does not change a recipe's run.
TRL logs sampling/sampling_logp_difference/* and sampling/importance_sampling_ratio/* each step."""
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ImportanceSampling:
    enabled: bool = field(default=True, metadata={"help": "correct for the vLLM-trainer log-prob mismatch (TRL's IS)"})
    mode: Literal["sequence_mask", "sequence_truncate", "token_mask", "token_truncate"] = field(
        default="sequence_mask", metadata={"help": "mask: ratios outside the bounds drop the token/sequence; truncate: clip"})
    clip_max: float | None = field(default=3.0, metadata={"gt": 0, "help": "C_max; null: no upper bound (mask modes)"})
    clip_min: float | None = field(default=None, metadata={"ge": 0, "help": "C_min; null: no lower bound"})


def grpo_args(vllm_mode: str, cfg: ImportanceSampling) -> dict:
    """The GRPOConfig arguments for the correction; none without vLLM (TRL then samples with the trainer's model)."""
    if vllm_mode == "none":
        return {}
    return {"vllm_importance_sampling_correction": cfg.enabled, "vllm_importance_sampling_mode": cfg.mode,
            "vllm_importance_sampling_clip_max": cfg.clip_max, "vllm_importance_sampling_clip_min": cfg.clip_min}


def check(cfg: ImportanceSampling, loss_type: str, where: str = "vllm.importance_sampling") -> list[tuple[str, str]]:
    """What TRL would reject when training starts (or silently get wrong), found at validation."""
    if not cfg.enabled:
        return []
    if cfg.clip_max is None and cfg.mode.endswith("truncate"):
        return [(f"{where}.clip_max", f"mode {cfg.mode} clips ratios, so it needs an upper bound; "
                                      "set clip_max (TRL's default: 3.0) or use a *_mask mode")]
    if None not in (cfg.clip_min, cfg.clip_max) and cfg.clip_min >= cfg.clip_max:
        return [(f"{where}.clip_min", f"{cfg.clip_min} must be below clip_max ({cfg.clip_max})")]
    if loss_type == "vespo" and not cfg.mode.startswith("token"):
        return [(f"{where}.mode", f"loss_type vespo computes sequence weights itself: use token_truncate or "
                                  f"token_mask (not {cfg.mode}), or set enabled: false")]
    return []
