"""A reward model trained on preference pairs, on TRL's RewardTrainer (Bradley-Terry: -log σ(r_chosen - r_rejected)).

It reads the same rows as `dpo` (prompt/chosen/rejected, whole conversations, HH-RLHF transcripts; `columns`
renames first) and starts from a causal LM checkpoint whose `lm_head` is replaced by a new one-output `score`
head. The output is a Hugging Face sequence classifier (num_labels 1) with its tokenizer: transformers'
AutoModelForSequenceClassification loads it, and an `rlvr` reward term `{name: model, model: ...}` scores
completions with it. The score is read at the last token of prompt + completion under the chat template.
Tülu 3's 8B RM: learning_rate 3e-6, 1 epoch, effective batch 256, max_length 2048.
"""
from dataclasses import dataclass, field
from typing import Literal

from posttrain import hf
from posttrain.formats import PreferenceColumn
from posttrain.stage import Context, Dataset, Model, register
from posttrain.stages.dpo import preference_dataset, preference_problems
from posttrain.training import (Launcher, Lora, TrainArgs, TrainingStage, check_launcher, check_lora, check_trl_args,
                                load_trainable, peft_config, train_and_save, trl_config)


@dataclass
class RewardModelConfig:
    model: Model = field(metadata={"help": "the causal LM to start from (its lm_head is replaced by a score head)"})
    data: Dataset = field(metadata={"help": "preference rows, as dpo reads them"})
    columns: dict[str, PreferenceColumn] | None = field(default=None, metadata={
        "help": "rename columns before reading the rows, e.g. {question: prompt, good: chosen, bad: rejected}"})
    max_length: int = field(default=2048, metadata={"ge": 8, "help": "longer pairs are dropped (TRL), and counted"})
    center_rewards_coefficient: float | None = field(default=None, metadata={
        "ge": 0, "help": "pulls rewards towards 0 (e.g. 0.01), so scores of different runs are comparable"})
    chat_template: str = hf.chat_template_field()
    on_bad_rows: Literal["error", "skip"] = "error"
    lora: Lora | None = field(default=None, metadata={"help": "train adapters and the new score head; merged on export"})
    train: TrainArgs = field(default_factory=lambda: TrainArgs(learning_rate=3e-6))
    launcher: Launcher = field(default_factory=Launcher)


def _reward_args(cfg: RewardModelConfig) -> dict:
    """The RewardConfig arguments this stage sets from its own keys (so train.trl_args may not)."""
    return dict(max_length=cfg.max_length, center_rewards_coefficient=cfg.center_rewards_coefficient)


@register
class RewardModel(TrainingStage):
    kind = "reward_model"
    Config = RewardModelConfig
    outputs = {"model": Model}
    description = "a reward model from preference pairs (TRL RewardTrainer), for rlvr's `model` reward term"

    def check(self, cfg: RewardModelConfig) -> list[tuple[str, str]]:
        return (check_launcher(cfg.launcher) + check_lora(cfg.lora) + preference_problems(cfg)
                + check_trl_args("RewardConfig", cfg.train, _reward_args(cfg)))

    def run(self, cfg: RewardModelConfig, ctx: Context) -> dict:
        from transformers import set_seed
        from trl import RewardConfig, RewardTrainer

        model_path = ctx.path(cfg.model)
        tokenizer = hf.load_tokenizer(model_path, cfg.chat_template)
        dataset, prepared = preference_dataset(cfg, ctx, tokenizer)
        args = trl_config(RewardConfig, cfg.train, ctx, cfg.launcher, **_reward_args(cfg))
        set_seed(cfg.train.seed)  # the new score head starts from the recipe's seed
        model = load_trainable(model_path, tokenizer, cfg.train, cfg.launcher,
                               cfg.lora.quantize if cfg.lora else "none", reward_head=True)
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                peft_config=peft_config(cfg.lora, task_type="SEQ_CLS"))
        metrics = train_and_save(trainer, tokenizer, ctx, merge_into=model_path if cfg.lora and cfg.lora.merge else None)
        last = next((h for h in reversed(trainer.state.log_history) if "accuracy" in h), {})
        return {**metrics, "pairs": len(trainer.train_dataset), "too_long_pairs": len(dataset) - len(trainer.train_dataset),
                "skipped_rows": prepared["skipped_rows"], **{k: last[k] for k in ("accuracy", "margin") if k in last}}
