"""Causal-LM training on raw text. With `model: builtin:tiny` it first builds the tiny world's
tokenizer and a randomly initialised small Llama, which is how the built-in base model is made."""
from dataclasses import dataclass, field
from typing import Any

from posttrain import hf
from posttrain.worlds import tinyworld
from posttrain.data import read_rows
from posttrain.formats import content_budget
from posttrain.stage import BuiltModel, Context, Dataset, Model, register
from posttrain.training import TrainingStage, TrainArgs, check_trl_args, train_and_save, trl_config

BUILTIN = "builtin:tiny"


@dataclass
class PretrainConfig:
    model: Model = field(metadata={"help": "builtin:tiny, or an HF model to continue pretraining", "builtin": True})
    data: Dataset = field(metadata={"help": "rows with a `text` field"})
    architecture: dict[str, Any] = field(default_factory=dict, metadata={"help": "LlamaConfig overrides for builtin:tiny"})
    max_length: int = field(default=256, metadata={"ge": 8})
    packing: bool = True
    train: TrainArgs = field(default_factory=TrainArgs)


def _sft_args(cfg: PretrainConfig) -> dict:
    """The SFTConfig arguments this stage sets from its own keys (so train.trl_args may not)."""
    return dict(max_length=cfg.max_length, packing=cfg.packing, dataset_text_field="text")


@register
class Pretrain(TrainingStage):
    kind = "pretrain"
    Config = PretrainConfig
    outputs = {"model": Model}
    description = "causal-LM training on raw text (builds the built-in tiny base model)"

    def check(self, cfg: PretrainConfig) -> list[tuple[str, str]]:
        problems = check_trl_args("SFTConfig", cfg.train, _sft_args(cfg))
        if cfg.architecture and cfg.model != BUILTIN:
            problems.append(("architecture", f"only applies to {BUILTIN}; a pretrained model keeps its own"))
        return problems

    def built_model(self, cfg: PretrainConfig) -> BuiltModel | None:
        if cfg.model != BUILTIN:
            return None
        context = {**tinyworld.DEFAULT_ARCH, **cfg.architecture}["max_position_embeddings"]
        return BuiltModel(context if isinstance(context, int) else None, frozenset(tinyworld.CHARS), f"builds {BUILTIN}")

    def run(self, cfg: PretrainConfig, ctx: Context) -> dict:
        from datasets import Dataset as HFDataset
        from trl import SFTConfig, SFTTrainer

        if cfg.model == BUILTIN:
            tokenizer = tinyworld.build_tokenizer()
            model = tinyworld.build_model(tokenizer, seed=cfg.train.seed, **cfg.architecture)
        else:
            tokenizer = hf.load_tokenizer(ctx.path(cfg.model))
            model = hf.load_model(ctx.path(cfg.model))
        # Unpacked, a row trains only its first max_length tokens: a huge one is cut first (formats.content_budget).
        budget = None if cfg.packing else content_budget(tokenizer, cfg.max_length)
        rows = [{"text": r["text"][:budget]} for r in read_rows(ctx.path(cfg.data))]
        args = trl_config(SFTConfig, cfg.train, ctx, **_sft_args(cfg))
        trainer = SFTTrainer(model=model, args=args, train_dataset=HFDataset.from_list(rows), processing_class=tokenizer)
        metrics = train_and_save(trainer, tokenizer, ctx)
        return {**metrics, "parameters": sum(p.numel() for p in model.parameters())}
