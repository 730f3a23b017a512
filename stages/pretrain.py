"""Causal-LM training on raw text. With `model: builtin:tiny` it first builds the tiny world's
tokenizer and a randomly initialised small Llama, which is how the built-in base model is made."""
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from posttrain import hf
from posttrain.worlds import tinyworld
from posttrain.data import DataError, ReadStats, convert_rows, first_rows_problem
from posttrain.formats import content_budget
from posttrain.stage import BuiltModel, Context, Dataset, Model, register
from posttrain.training import TrainingStage, TrainArgs, check_trl_args, train_and_save, trl_config

BUILTIN = "builtin:tiny"


@dataclass
class TinyArchitecture:
    """The LlamaConfig settings of the built-in tiny model a recipe may change (unknown ones are errors, not ignored)."""

    hidden_size: int = field(default=tinyworld.DEFAULT_ARCH["hidden_size"], metadata={"ge": 1})
    num_hidden_layers: int = field(default=tinyworld.DEFAULT_ARCH["num_hidden_layers"], metadata={"ge": 1})
    num_attention_heads: int = field(default=tinyworld.DEFAULT_ARCH["num_attention_heads"], metadata={"ge": 1})
    num_key_value_heads: int = field(default=tinyworld.DEFAULT_ARCH["num_key_value_heads"], metadata={"ge": 1})
    intermediate_size: int = field(default=tinyworld.DEFAULT_ARCH["intermediate_size"], metadata={"ge": 1})
    max_position_embeddings: int = field(default=tinyworld.DEFAULT_ARCH["max_position_embeddings"], metadata={"ge": 8})
    hidden_act: Literal["silu", "gelu", "relu"] = "silu"
    rms_norm_eps: float = field(default=1e-6, metadata={"gt": 0})
    attention_bias: bool = False
    mlp_bias: bool = False


@dataclass
class PretrainConfig:
    model: Model = field(metadata={"help": "builtin:tiny, or an HF model to continue pretraining", "builtin": True})
    data: Dataset = field(metadata={"help": "rows with a `text` field"})
    architecture: TinyArchitecture | None = field(default=None, metadata={
        "help": "the built-in tiny model's LlamaConfig (keys not given keep their defaults)"})
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
        if bad := first_rows_problem(cfg.data, text_row):
            problems.append(("data", bad))
        return problems

    def built_model(self, cfg: PretrainConfig) -> BuiltModel | None:
        if cfg.model != BUILTIN:
            return None
        context = (cfg.architecture or TinyArchitecture()).max_position_embeddings
        return BuiltModel(context, frozenset(tinyworld.CHARS), f"builds {BUILTIN}")

    def run(self, cfg: PretrainConfig, ctx: Context) -> dict:
        from datasets import Dataset as HFDataset
        from trl import SFTConfig, SFTTrainer

        if cfg.model == BUILTIN:
            tokenizer = tinyworld.build_tokenizer()
            model = tinyworld.build_model(tokenizer, seed=cfg.train.seed, **asdict(cfg.architecture or TinyArchitecture()))
        else:
            tokenizer = hf.load_tokenizer(ctx.path(cfg.model))
            model = hf.load_model(ctx.path(cfg.model))
        # Unpacked, a row trains only its first max_length tokens: a huge one is cut first (formats.content_budget).
        budget = None if cfg.packing else content_budget(tokenizer, cfg.max_length)
        rows = convert_rows(ctx.path(cfg.data), lambda row, where: {"text": text_row(row, where)[:budget]}, "error",
                            ReadStats())
        truncated = 0 if cfg.packing else _count_truncated(rows, tokenizer, cfg.max_length)
        if truncated:
            ctx.info(f"{truncated} of {len(rows)} rows are longer than max_length={cfg.max_length} and will be truncated")
        args = trl_config(SFTConfig, cfg.train, ctx, **_sft_args(cfg))
        trainer = SFTTrainer(model=model, args=args, train_dataset=HFDataset.from_list(rows), processing_class=tokenizer)
        metrics = train_and_save(trainer, tokenizer, ctx)
        return {**metrics, "parameters": sum(p.numel() for p in model.parameters()), "truncated": truncated}


def text_row(row: dict, where: str) -> str:
    """A pretraining row's text: its `text` field, a non-empty string."""
    if not isinstance(row.get("text"), str) or not row["text"].strip():
        got = f"`text` is {json.dumps(row['text'])[:80]}" if "text" in row else f"no `text`; it has: {', '.join(sorted(row)[:8])}"
        raise DataError(f"{where}: a pretraining row needs `text`, a non-empty string; {got}")
    return row["text"]


def _count_truncated(rows: list[dict], tokenizer, max_length: int, batch: int = 1000) -> int:
    """How many rows training cuts at max_length (unpacked, each row is one example)."""
    return sum(len(ids) > max_length for start in range(0, len(rows), batch)
               for ids in tokenizer([r["text"] for r in rows[start:start + batch]])["input_ids"])
