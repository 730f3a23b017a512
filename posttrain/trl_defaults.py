"""Where posttrain's defaults differ from TRL 1.16's, and why. `posttrain keys` (docs/stages.md) shows TRL's value
beside ours, `posttrain config` marks a default that differs; tests/test_trl_defaults.py checks every value here
against TRL's own dataclasses, and that no other default differs."""
from typing import Any

# The TRL config each training stage kind builds.
TRL_CONFIG = {"pretrain": "SFTConfig", "sft": "SFTConfig", "dpo": "DPOConfig", "rlvr": "GRPOConfig",
              "reward_model": "RewardConfig", "distill": "DistillationConfig"}
# Ours and TRL's mean the same though they are written differently: precision auto is TRL's bf16=None (bf16 where
# supported), an empty lr_scheduler_kwargs is TRL's None.
SAME_MEANING = {"precision", "lr_scheduler_kwargs"}

_EPOCHS = "Tülu 3 trains 1 epoch of DPO and the reward model (2 of SFT at 8B); repeated pairs overfit (DPO warns)"
_SHARED = {  # (TRL's default, why ours differs), the same for every kind
    "num_train_epochs": (3.0, _EPOCHS),
    "seed": (42, "posttrain numbers seeds from 0 (vars.seed; the demo's seeds are 0, 1, 2)"),
    "save_steps": (500, "resume granularity: a killed stage loses at most 50 steps"),
    "save_total_limit": (None, "bounds the disk; a resume needs only the newest complete checkpoint, the one before "
                               "it covers a half-written newest"),
    "logging_steps": (10, "denser curves in the report for short runs"),
    "optim": ("adamw_torch_fused", "the unfused AdamW, the same update, runs on every device and torch build; set "
                                   "adamw_torch_fused on CUDA for speed"),
    "gradient_checkpointing": (True, "it costs about a third more compute per step; small models and CPU runs do "
                                     "not need the memory it saves: turn it on for large models"),
}
_BY_KIND = {
    "pretrain": {"learning_rate": (2e-5, "one default for the training stages (TrainArgs); recipes set their own"),
                 "max_length": (1024, "the built-in tiny model's context (max_position_embeddings 256)"),
                 "packing": (False, "raw text is packed into full windows, as pretraining does")},
    "sft": {"learning_rate": (2e-5, "closer to full fine-tuning practice (Tülu 3's 8B SFT: 5e-6)"),
            "max_length": (1024, "Tülu 3's max_length (2048)"),
            "assistant_only_loss": (False, "the answer is trained, not the prompt, as in Tülu 3 (open-instruct masks "
                                           "the prompt)")},
    "dpo": {"learning_rate": (1e-6, "Tülu 3's 8B DPO learning rate"),
            "max_length": (1024, "Tülu 3's max_length (2048)"),
            "precompute_ref_log_probs": (False, "the reference is a saved checkpoint whose log-probs are computed once "
                                                "and cached: a resume reuses them and no reference model sits in memory "
                                                "while the policy trains")},
    "rlvr": {"learning_rate": (1e-6, "the training stages' shared default (TrainArgs), not tuned for RL (Tülu 3's 8B "
                                     "RLVR: 3e-7): set it in the recipe"),
             "max_completion_length": (512, "short rollouts for the default small models and CPU runs (Tülu 3 at 8B: "
                                            "2048): set it in the recipe")},
    "reward_model": {"learning_rate": (1e-4, "Tülu 3's 8B reward model"),
                     "max_length": (1024, "Tülu 3's max_length (2048)")},
    "distill": {"max_completion_length": (512, "short rollouts for the default small models and CPU runs, as rlvr's")},
}


def trl_default(kind: str, key: str) -> tuple[Any, str] | None:
    """(TRL's default, why ours differs) for a stage kind's key ("train.seed" or "max_length"), or None where ours
    is TRL's or TRL has no such argument."""
    if kind not in TRL_CONFIG:
        return None
    name = key.removeprefix("train.")
    by_kind = _BY_KIND[kind]
    if key.startswith("train."):
        return by_kind.get(name) if name == "learning_rate" else _SHARED.get(name)  # distill's lr is TRL's
    return by_kind.get(name) if name != "learning_rate" else None


def table(kind: str) -> dict[str, tuple[Any, str]]:
    """Every key of `kind` whose default differs from TRL's: {key as `posttrain keys` names it: (TRL's, why)}."""
    if kind not in TRL_CONFIG:
        return {}
    keys = [f"train.{k}" for k in _SHARED] + ["train.learning_rate"] + [k for k in _BY_KIND[kind] if k != "learning_rate"]
    return {key: found for key in keys if (found := trl_default(kind, key))}
