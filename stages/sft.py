"""Supervised fine-tuning on a mixture of sources, on TRL's SFTTrainer.

Every source row is converted explicitly to `messages` (from messages, prompt/completion or alpaca);
a row that fits no format is an error naming the file and row. Assistant-only loss is on by default, on any chat
template (posttrain.chat_templates marks its assistant turns, or refuses it with the reason).
"""
from dataclasses import dataclass, field
from typing import Literal

from posttrain import chat_templates, hf
from posttrain.data import DataError, ReadStats, convert_rows, first_rows_problem, write_json
from posttrain.formats import SFTColumn, SFTFormat, clip_messages, columns_problem, content_budget, rename_columns, to_messages
from posttrain.stage import Context, Dataset, Model, register
from posttrain.training import TrainingStage
from posttrain.prepare import prepared_dataset
from posttrain.training import (Launcher, Lora, TrainArgs, check_launcher, check_lora, check_trl_args, load_trainable,
                                peft_config, train_and_save, trl_config)


@dataclass
class Source:
    path: Dataset
    count: int | None = field(default=None, metadata={"ge": 1, "help": "rows to use; more than the source has upsamples by repetition"})
    fraction: float | None = field(default=None, metadata={"gt": 0, "help": "fraction of the source's rows; >1 upsamples"})
    format: SFTFormat = field(default="auto", metadata={"help": "auto: recognised per row (docs/data.md)"})
    columns: dict[str, SFTColumn] | None = field(default=None, metadata={
        "help": "rename columns before reading the format, e.g. {question: prompt, answer: completion}"})


@dataclass
class SFTStageConfig:
    model: Model
    data: Dataset | list[Source] = field(metadata={"help": "one file, or a mixture of sources (docs/data.md)"})
    chat_template: str = hf.chat_template_field()
    assistant_only_loss: bool = field(default=True, metadata={
        "help": "train only the assistant turns, each through its end-of-turn token, under any chat template (docs/data.md)"})
    loss_reduction: Literal["token_mean", "sum"] = field(default="token_mean", metadata={
        "help": "token_mean: mean over trained tokens; sum: summed over a micro-batch's tokens (Tülu 3)"})
    max_length: int = field(default=2048, metadata={"ge": 8})
    packing: bool = False
    mix_seed: int = 0
    on_bad_rows: Literal["error", "skip"] = "error"
    lora: Lora | None = None
    train: TrainArgs = field(default_factory=TrainArgs)
    launcher: Launcher = field(default_factory=Launcher)


def mix(sources: list[Source], ctx: Context, seed: int, on_bad_rows: str, max_chars: int | None = None,
        turns: hf.TurnCheck | None = None, keep_row: bool = False) -> tuple[list[dict], dict]:
    """The resolved mixture: rows from each source by explicit count or fraction, upsampled by repetition.
    max_chars: each message cut to this many characters as it is read (see _clipped_mix). turns: the chat
    template's check that every turn of a row is rendered (a role it does not know would vanish from training).
    keep_row: each example also carries its source row as `row` (for inspect; the order is the same)."""
    import random

    rng = random.Random(seed)
    rows, record = [], {"sources": [], "skipped_rows": 0}
    for src in sources:
        path = ctx.path(src.path)
        stats = ReadStats()
        convs = convert_rows(path, lambda row, where: {"messages": clip_messages(_chat(src, row, where, turns), max_chars),
                                                       **({"row": row} if keep_row else {})}, on_bad_rows, stats)
        want = src.count if src.count is not None else round(len(convs) * src.fraction) if src.fraction is not None else len(convs)
        order = list(range(len(convs)))
        rng.shuffle(order)
        picked = [convs[order[i % len(order)]] for i in range(want)]
        rows += picked
        record["sources"].append({"path": str(path), "available": len(convs), "used": len(picked),
                                  "repeats": round(want / len(convs), 3), "skipped_rows": stats.skipped})
        record["skipped_rows"] += stats.skipped
    rng.shuffle(rows)
    return rows, record


def _chat(src: Source, row: dict, where: str, turns: hf.TurnCheck | None = None) -> list[dict]:
    messages = to_messages(rename_columns(row, src.columns, where), src.format, where)
    return turns(messages, where) if turns else messages


def _sources(cfg: SFTStageConfig) -> list[Source]:
    return [Source(path=cfg.data)] if isinstance(cfg.data, str) else cfg.data


def _count_truncated(rows: list[dict], tokenizer, max_length: int, batch: int = 1000) -> int:
    """How many rows the trainer will cut. Tokenised a batch at a time: the token lists of a 939k-row mixture
    are never all held at once. Rendered with the training template, so a row it refuses (posttrain's marked
    copy refuses a turn whose prompt renders differently) is named here, not deep inside TRL."""
    count = 0
    for start in range(0, len(rows), batch):
        chats = [r["messages"] for r in rows[start:start + batch]]
        try:
            texts = tokenizer.apply_chat_template(chats, tokenize=False)
        except Exception:  # noqa: BLE001 - the template's own error, for the first row that raises it
            _raise_for_row(tokenizer, chats, start)
            raise
        count += sum(len(ids) > max_length for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return count


def _raise_for_row(tokenizer, chats: list[list[dict]], start: int) -> None:
    for i, chat in enumerate(chats):
        try:
            tokenizer.apply_chat_template(chat, tokenize=False)
        except Exception as e:  # noqa: BLE001 - any template error, reported with the row
            first = next((m["content"] for m in chat if m["role"] != "system"), "")[:60]
            raise DataError(f"example {start + i} of the mixture (it starts {first!r}; roles "
                            f"{[m['role'] for m in chat]}): the chat template refuses it: {e}") from None


def _dataset(cfg: SFTStageConfig, ctx: Context, tokenizer):
    """The resolved mixture, built and counted once (rank 0) into an Arrow copy in the stage folder; the other
    ranks memory-map it, and TRL's tokenisation cache lives beside it."""
    def build():
        rows, mixture = _clipped_mix(cfg, ctx, tokenizer)
        return rows, {"mixture": mixture, "truncated": _count_truncated(rows, tokenizer, cfg.max_length)}

    return prepared_dataset(ctx.out_dir / "dataset", build)


@register
class SFT(TrainingStage):
    kind = "sft"
    Config = SFTStageConfig
    outputs = {"model": Model}
    description = "supervised fine-tuning (TRL SFTTrainer)"

    def check(self, cfg: SFTStageConfig) -> list[tuple[str, str]]:
        problems = check_launcher(cfg.launcher) + check_lora(cfg.lora) + check_trl_args("SFTConfig", cfg.train, _sft_args(cfg))
        problems += chat_templates.check_model_template(cfg.model, cfg.chat_template, cfg.assistant_only_loss)
        turns = hf.TurnCheck.of_setting(cfg.chat_template)
        for i, src in enumerate(_sources(cfg)):
            if src.count is not None and src.fraction is not None:
                problems.append((f"data[{i}]", "give either count or fraction, not both"))
            key = "data" if isinstance(cfg.data, str) else f"data[{i}]"
            if columns_problem(src.columns):
                problems.append((f"{key}.columns", columns_problem(src.columns)))
            elif bad := cfg.on_bad_rows == "error" and first_rows_problem(src.path, lambda r, w: _chat(src, r, w, turns)):
                problems.append((key if isinstance(cfg.data, str) else f"{key}.path", bad))
        return problems

    def run(self, cfg: SFTStageConfig, ctx: Context) -> dict:
        tokenizer = hf.load_tokenizer(ctx.path(cfg.model), cfg.chat_template)
        # Before any data or model is read: a template that cannot be marked safely stops the stage here.
        template, how = _training_template(cfg, tokenizer)
        with chat_templates.carrying(tokenizer, template):
            dataset, prepared = _dataset(cfg, ctx, tokenizer)
            mixture, truncated = prepared["mixture"], prepared["truncated"]
            if truncated:
                ctx.info(f"{truncated} of {len(dataset)} examples are longer than max_length={cfg.max_length} and will be truncated")
            trainer = _trainer(cfg, ctx, tokenizer, dataset)
        # TRL drops examples whose truncation left no trained token (a prompt that fills max_length): say so
        dropped = len(dataset) - len(trainer.train_dataset)
        if dropped == len(dataset):
            raise DataError(f"none of the {len(dataset)} examples has a trained token within max_length="
                            f"{cfg.max_length}: every prompt (with the template's system prompt) fills it; raise "
                            "max_length or shorten the prompts")
        warnings = [f"{dropped} of {len(dataset)} examples have no trained token within max_length={cfg.max_length} "
                    "(the prompt fills it) and are not trained on; raise max_length to keep them"] if dropped else []
        for warning in warnings:
            ctx.warn(warning)
        merge_into = ctx.path(cfg.model) if cfg.lora and cfg.lora.merge else None
        metrics = train_and_save(trainer, tokenizer, ctx, merge_into=merge_into)
        if trainer.is_world_process_zero():  # one writer per run folder, however many ranks and nodes
            write_json(ctx.out_dir / "mixture.json", mixture)
        return {**metrics, "rows": len(dataset), "truncated": truncated, "dropped_no_trained_token": dropped,
                **({"warnings": warnings} if warnings else {}), "loss_reduction": cfg.loss_reduction,
                "skipped_rows": mixture["skipped_rows"], "assistant_mask": how}


def _training_template(cfg: SFTStageConfig, tokenizer) -> tuple[str, str | None]:
    """The template TRL tokenizes the data with and how its assistant turns are marked (None: every token
    trains); a template that cannot be marked safely is an error naming the reason."""
    if not cfg.assistant_only_loss:
        return tokenizer.chat_template, None
    try:
        return chat_templates.training_template(tokenizer)
    except chat_templates.TemplateProblem as e:
        raise DataError(f"chat_template (model {cfg.model}): {e}") from None


def _clipped_mix(cfg: SFTStageConfig, ctx: Context, tokenizer, keep_row: bool = False) -> tuple[list[dict], dict]:
    """The mixture with each message cut where it can no longer reach the first max_length tokens, so a huge
    row costs what max_length costs (see formats.content_budget)."""
    return mix(_sources(cfg), ctx, cfg.mix_seed, cfg.on_bad_rows, content_budget(tokenizer, cfg.max_length),
               hf.TurnCheck.of_tokenizer(tokenizer), keep_row)


def _sft_args(cfg: SFTStageConfig) -> dict:
    """The SFTConfig arguments this stage sets from its own keys (so train.trl_args may not). loss_type: the
    stage's loss_reduction replaces TRL's loss choice."""
    return dict(max_length=cfg.max_length, packing=cfg.packing, assistant_only_loss=cfg.assistant_only_loss,
                loss_type="nll")


def _trainer(cfg: SFTStageConfig, ctx: Context, tokenizer, dataset):
    from trl import SFTConfig, SFTTrainer

    args = trl_config(SFTConfig, cfg.train, ctx, cfg.launcher, **_sft_args(cfg))
    model = load_trainable(ctx.path(cfg.model), tokenizer, cfg.train, cfg.launcher, cfg.lora.quantize if cfg.lora else "none")
    trainer_cls = _sum_loss_trainer(SFTTrainer) if cfg.loss_reduction == "sum" else SFTTrainer
    return trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                       peft_config=peft_config(cfg.lora))


def _sum_loss_trainer(SFTTrainer):
    import torch

    class SumLoss(SFTTrainer):
        """Loss summed over the micro-batch's trained tokens, not averaged (Tülu 3's reduce_loss=sum).
        Passing num_items_in_batch=1 makes the model's loss a plain sum and tells the Trainer it is
        already scaled, so it is not divided by the accumulation steps either."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            one = torch.ones((), device=self.args.device)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch=one)

    return SumLoss


def inspect_example(cfg: SFTStageConfig, ctx: Context, index: int = 0) -> str:
    """One example as the trainer sees it: trained tokens in [brackets], the rest plain. The first line also says,
    where the example's source row names a verifier, whether its target passes it (inspect_views.target_check)."""
    from posttrain.inspect_views import target_check

    tokenizer = hf.load_tokenizer(ctx.path(cfg.model), cfg.chat_template)
    rows, _ = _clipped_mix(cfg, ctx, tokenizer, keep_row=True)
    if index >= len(rows):
        raise DataError(f"--index {index}: the stage's mixture has {len(rows)} examples (0 to {len(rows) - 1})")
    enc = tokenizer.apply_chat_template(rows[index]["messages"], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True,
                                        chat_template=_training_template(cfg, tokenizer)[0])
    ids, mask = enc["input_ids"][: cfg.max_length], enc["assistant_masks"][: cfg.max_length]
    if not cfg.assistant_only_loss:
        mask = [1] * len(ids)
    out, inside = [], False
    for tid, trained in zip(ids, mask):
        if bool(trained) != inside:
            out.append("[" if trained else "]")
            inside = bool(trained)
        out.append(tokenizer.decode([tid]))
    if inside:
        out.append("]")
    check = target_check(rows[index]["row"], rows[index]["messages"], cut=len(enc["input_ids"]) > cfg.max_length)
    return f"example {index}: {len(ids)} tokens, {sum(mask)} trained (in [brackets]); {check}\n" + "".join(out)
