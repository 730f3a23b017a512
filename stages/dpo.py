"""Preference optimisation with every TRL 1.16 DPO loss, on TRL's DPOTrainer.

Tülu 3's length-normalised DPO is `loss_type: [sigmoid_norm]`; its 8B settings map to beta 5,
learning_rate 5e-7, warmup_ratio 0.1, 1 epoch, effective batch 128, max_length 2048.
The reference model is always a saved checkpoint (by default the `model` input itself), never whatever
is in memory. Reference log-probs are precomputed once and cached next to the stage's dataset copy,
keyed by the reference weights and the data, so a resume reuses them and any change recomputes them.
"""
import math
from dataclasses import dataclass, field
from typing import Literal

from posttrain import chat_templates, hf
from posttrain.data import DataError, ReadStats, convert_rows, first_rows_problem
from posttrain.prepare import prepared_dataset
from posttrain.formats import PreferenceColumn, clip_messages, columns_problem, content_budget, rename_columns, to_preference
from posttrain.stage import Context, Dataset, Model, register
from posttrain.training import TrainingStage
from posttrain.training import (Launcher, Lora, TrainArgs, check_launcher, check_lora, check_trl_args, load_trainable,
                                peft_config, train_and_save, trl_config)

DPOLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


@dataclass
class DPOStageConfig:
    model: Model
    data: Dataset = field(metadata={"help": "prompt/chosen/rejected rows (chat or plain), or HH-RLHF transcripts"})
    columns: dict[str, PreferenceColumn] | None = field(default=None, metadata={
        "help": "rename columns before reading the rows, e.g. {question: prompt, good: chosen, bad: rejected}"})
    reference: Model | None = field(default=None, metadata={"help": "default: the `model` input's saved checkpoint"})
    loss_type: list[DPOLoss] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    beta: float = field(default=0.1, metadata={"gt": 0})
    label_smoothing: float = field(default=0.0, metadata={"ge": 0, "lt": 0.5})
    precompute_ref_log_probs: bool = True
    max_length: int = field(default=2048, metadata={"ge": 8})
    chat_template: str = "model"
    on_bad_rows: Literal["error", "skip"] = "error"
    lora: Lora | None = field(default=None, metadata={"help": "train adapters; the reference is then the adapter-free model"})
    train: TrainArgs = field(default_factory=lambda: TrainArgs(learning_rate=5e-7))
    launcher: Launcher = field(default_factory=Launcher)


def _dpo_args(cfg: DPOStageConfig) -> dict:
    """The DPOConfig arguments this stage sets from its own keys (so train.trl_args may not)."""
    return dict(loss_type=cfg.loss_type, loss_weights=cfg.loss_weights, beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                max_length=cfg.max_length, precompute_ref_log_probs=cfg.precompute_ref_log_probs)


@register
class DPO(TrainingStage):
    kind = "dpo"
    Config = DPOStageConfig
    outputs = {"model": Model}
    description = "preference optimisation (TRL DPOTrainer, every loss type)"

    def check(self, cfg: DPOStageConfig) -> list[tuple[str, str]]:
        problems = (check_launcher(cfg.launcher) + check_lora(cfg.lora) + check_trl_args("DPOConfig", cfg.train, _dpo_args(cfg))
                    + preference_problems(cfg) + chat_templates.check_model_template(cfg.model, cfg.chat_template, False))
        if cfg.loss_weights is not None and len(cfg.loss_weights) != len(cfg.loss_type):
            problems.append(("loss_weights", f"{len(cfg.loss_weights)} weights for {len(cfg.loss_type)} loss types"))
        if "exo_pair" in cfg.loss_type and cfg.label_smoothing <= 0:
            problems.append(("label_smoothing", "exo_pair needs label_smoothing > 0 (e.g. 1e-3)"))
        if cfg.lora and cfg.reference:
            problems.append(("reference", "with lora the reference is the adapter-free model; drop `reference`"))
        return problems

    def run(self, cfg: DPOStageConfig, ctx: Context) -> dict:
        from trl import DPOConfig, DPOTrainer

        model_path = ctx.path(cfg.model)
        tokenizer = hf.load_tokenizer(model_path, cfg.chat_template)
        if problem := chat_templates.prompt_problem(tokenizer):  # TRL would cut the prompt where it diverges
            raise DataError(f"chat_template (model {cfg.model}): {problem}")
        dataset, prepared = preference_dataset(cfg, ctx, tokenizer)
        args = trl_config(DPOConfig, cfg.train, ctx, cfg.launcher, **_dpo_args(cfg))
        model = load_trainable(model_path, tokenizer, cfg.train, cfg.launcher, cfg.lora.quantize if cfg.lora else "none")
        # With LoRA, TRL's reference is the model with adapters disabled: the same saved checkpoint. Otherwise it
        # is loaded like the policy (same dtype), so at step 0 both give the same log-probs.
        reference = None if cfg.lora else load_trainable(ctx.path(cfg.reference) if cfg.reference else model_path,
                                                         tokenizer, cfg.train, cfg.launcher)
        repeated = repeated_pairs_warning(len(dataset), args)
        if repeated:
            ctx.warn(repeated)
        trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config(cfg.lora))
        metrics = train_and_save(trainer, tokenizer, ctx, merge_into=model_path if cfg.lora and cfg.lora.merge else None)
        last = next((h for h in reversed(trainer.state.log_history) if "rewards/margins" in h), {})
        return {**metrics, "pairs": len(dataset), "skipped_rows": prepared["skipped_rows"],
                **{k: last[k] for k in ("rewards/margins", "rewards/accuracies") if k in last},
                **({"warnings": [repeated]} if repeated else {})}


def preference_problems(cfg) -> list[tuple[str, str]]:
    """`columns` and the first rows of `data`, for every stage that reads preference rows (dpo, reward_model)."""
    if columns_problem(cfg.columns):
        return [("columns", columns_problem(cfg.columns))]
    bad = cfg.on_bad_rows == "error" and first_rows_problem(cfg.data, lambda r, w: _pair(cfg, r, w))
    return [("data", bad)] if bad else []


def preference_dataset(cfg, ctx: Context, tokenizer):
    """The pairs in TRL's form, converted once (rank 0) into an Arrow copy in the stage folder: TRL's
    tokenisation and reference log-prob caches live beside it and survive a resume. `cfg`: any config with
    DPO's data, columns, max_length and on_bad_rows keys."""
    def build():
        stats = ReadStats()
        return read_pairs(cfg, ctx, tokenizer, stats), {"skipped_rows": stats.skipped}

    return prepared_dataset(ctx.out_dir / "dataset", build)


def read_pairs(cfg, ctx: Context, tokenizer, stats: ReadStats) -> list[dict]:
    """The preference rows, each message cut as it is read where it can no longer reach the first max_length
    tokens, so a huge row costs what max_length costs (see formats.content_budget)."""
    budget = content_budget(tokenizer, cfg.max_length)
    return convert_rows(ctx.path(cfg.data), lambda row, where: {k: clip_messages(v, budget) for k, v in
                                                                _pair(cfg, row, where).items()},
                        cfg.on_bad_rows, stats)


def _pair(cfg, row: dict, where: str) -> dict:
    return to_preference(rename_columns(row, cfg.columns, where), where)


def repeated_pairs_warning(pairs: int, args) -> str | None:
    """Say so when training would show each preference pair more than once; never cap it silently."""
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    if args.max_steps > 0:
        if args.max_steps <= math.ceil(pairs / per_step):  # one pass, the last batch possibly partial
            return None
        passes, why = args.max_steps * per_step / pairs, f"{args.max_steps} steps × {per_step} per step"
    elif args.num_train_epochs > 1:
        passes, why = args.num_train_epochs, f"num_train_epochs={args.num_train_epochs:g}"
    else:
        return None
    return (f"DPO will see each of {pairs} pairs {passes:.1f} times ({why}); Tülu 3 uses 1 epoch. Repeated pairs "
            "overfit: the reward margins keep growing on pairs already learned. Add pairs, or lower max_steps or "
            "num_train_epochs")
