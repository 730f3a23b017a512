"""On-policy distillation, on TRL's DistillationTrainer (stable since TRL 1.10).

The student (`model`) samples a completion for each prompt; the teacher scores every token of it, and the
student is trained to match the teacher's next-token distribution there under the generalised Jensen-Shannon
divergence (`beta`: 0 forward KL, 0.5 JSD, 1 reverse KL; Agarwal et al. 2024, "On-Policy Distillation of
Language Models"). The trainer's loss *is* that divergence, per completion token, on the student's own samples
(metrics.jsonl `loss`; the report titles it so), and `entropy` is the student's per-token entropy there.

TRL 1.16's stable trainer is fully on-policy: every completion is the student's, so there is no on-policy share
(`lmbda`) to set; only the experimental GKDTrainer mixes in dataset completions, and this stage does not use it.
The divergence compares whole distributions over one vocabulary, so teacher and student must share a tokenizer:
checked at validation when both are local folders, else before any model loads. Completions are generated once
per optimizer step (the generation batch is the whole step), so every checkpoint falls on a generation
boundary and a resume is exact. With `lora` the student trains adapters, merged into the export as in sft.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from posttrain import hf
from posttrain.data import DataError, ReadStats, convert_rows, first_rows_problem
from posttrain.formats import as_chat, to_example
from posttrain.prepare import prepared_dataset
from posttrain.stage import Context, Dataset, Model, is_ref, register
from posttrain.training import (Launcher, Lora, TrainArgs, TrainingStage, check_launcher, check_lora, check_trl_args,
                                load_trainable, peft_config, train_and_save, trl_config)


@dataclass
class DistillConfig:
    model: Model = field(metadata={"help": "the student: it generates, and it is trained"})
    teacher: Model = field(metadata={"help": "scores every token the student generates; must share its tokenizer"})
    data: Dataset = field(metadata={"help": "prompts: a `prompt_column` (string or chat), or SFT rows (the turns "
                                            "before the last assistant turn)"})
    prompt_column: str = field(default="prompt", metadata={"help": "a chat (list of messages) or a plain string"})
    beta: float = field(default=1.0, metadata={
        "ge": 0, "le": 1, "help": "generalised JSD: 0 forward KL, 0.5 JSD, 1 reverse KL (TRL's default)"})
    temperature: float = field(default=1.0, metadata={"gt": 0, "help": "for sampling and for both distributions"})
    max_completion_length: int = field(default=256, metadata={"ge": 1, "help": "new tokens per student completion"})
    chat_template: str = "model"
    on_bad_rows: Literal["error", "skip"] = "error"
    lora: Lora | None = field(default=None, metadata={"help": "train student adapters; merged on export"})
    train: TrainArgs = field(default_factory=lambda: TrainArgs(learning_rate=1e-6))  # TRL DistillationConfig's
    launcher: Launcher = field(default_factory=Launcher)


def to_prompt(row: dict, column: str, where: str) -> list[dict]:
    """A row's prompt as a chat: its `column` (a string or a chat, as rlvr, generate and eval read prompts), else,
    for an SFT row (messages, prompt+completion, alpaca), the conversation before its last assistant turn."""
    value = row.get(column)
    if isinstance(value, str) or (isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)):
        return as_chat(value)
    try:
        return list(to_example(row, where).prompt)
    except DataError:
        raise DataError(f"{where}: no prompt: expected `{column}` (a string or a list of {{role, content}}) or an SFT "
                        f"row (messages, prompt+completion, alpaca); it has: {', '.join(sorted(row)[:8]) or 'none'}"
                        ) from None


def _distill_args(cfg: DistillConfig) -> dict:
    """The DistillationConfig arguments this stage sets from its own keys (so train.trl_args may not)."""
    return dict(beta=cfg.beta, temperature=cfg.temperature, max_completion_length=cfg.max_completion_length)


def _vocabulary(model: str) -> dict | None:
    """A local folder's vocabulary as its tokenizer.json gives it (the model section and the added tokens), without
    loading transformers; None when that cannot be read here (a hub id, an upstream stage's output, another format)."""
    if is_ref(model) or not (Path(model) / "tokenizer.json").is_file():
        return None
    try:
        spec = json.loads((Path(model) / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return None
    return {"model": spec.get("model"), "added": sorted((t["id"], t["content"]) for t in spec.get("added_tokens") or [])}


def tokenizer_mismatch(student: dict, teacher: dict) -> str | None:
    """Why two vocabularies (token -> id) differ, or None: the sizes, else the first token they map differently."""
    if student == teacher:
        return None
    if len(student) != len(teacher):
        return f"the student's tokenizer has {len(student)} tokens, the teacher's {len(teacher)}"
    token = min(set(student.items()) ^ set(teacher.items()))[0]
    return (f"token {token!r} is id {student.get(token)} in the student's tokenizer and {teacher.get(token)} in the "
            "teacher's")


def _mismatch_error(detail: str) -> str:
    return (f"teacher and student do not share a tokenizer ({detail}); on-policy distillation compares their "
            "next-token distributions over one vocabulary: pick a teacher of the student's family (TRL's experimental "
            "GOLD trainer distils across tokenizers; this stage does not)")


@register
class Distill(TrainingStage):
    kind = "distill"
    Config = DistillConfig
    outputs = {"model": Model}
    description = "on-policy distillation from a teacher model (TRL DistillationTrainer, generalised JSD)"

    def check(self, cfg: DistillConfig) -> list[tuple[str, str]]:
        problems = check_launcher(cfg.launcher) + check_lora(cfg.lora) + check_trl_args("DistillationConfig", cfg.train,
                                                                                         _distill_args(cfg))
        if bad := cfg.on_bad_rows == "error" and first_rows_problem(cfg.data, lambda r, w: to_prompt(r, cfg.prompt_column, w)):
            problems.append(("data", bad))
        student, teacher = _vocabulary(cfg.model), _vocabulary(cfg.teacher)
        if student is not None and teacher is not None and student != teacher:
            differs = "the tokenizer models differ" if student["model"] != teacher["model"] else "the added tokens differ"
            problems.append(("teacher", _mismatch_error(f"{differs}: {cfg.model}/tokenizer.json vs "
                                                        f"{cfg.teacher}/tokenizer.json")))
        return problems

    def run(self, cfg: DistillConfig, ctx: Context) -> dict:
        from transformers import AutoTokenizer
        from trl import DistillationConfig, DistillationTrainer

        student_path, teacher_path = ctx.path(cfg.model), ctx.path(cfg.teacher)
        # Before any model loads: an upstream stage's output or a hub id could not be compared at validation.
        vocabularies = [AutoTokenizer.from_pretrained(n, revision=r).get_vocab()
                        for n, r in map(hf.split_revision, (student_path, teacher_path))]
        if detail := tokenizer_mismatch(*vocabularies):
            raise DataError(_mismatch_error(detail))
        tokenizer = hf.load_tokenizer(student_path, cfg.chat_template)
        tokenizer.padding_side = "left"  # TRL generates from left-padded prompts
        dataset, prepared = _dataset(cfg, ctx)
        args = trl_config(DistillationConfig, cfg.train, ctx, cfg.launcher, **_distill_args(cfg))
        # TRL samples whole generation batches and drops the rest: fewer prompts than one batch would train nothing.
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        if len(dataset) < batch:
            raise DataError(f"{ctx.path(cfg.data)}: {len(dataset)} prompts, fewer than one generation batch of {batch} "
                            f"(train.per_device_train_batch_size x gradient_accumulation_steps x processes): add prompts "
                            "or lower the batch")
        # Loaded after the TRL config on purpose: under ZeRO-3 they then load partitioned (see load_trainable).
        student = load_trainable(student_path, tokenizer, cfg.train, cfg.launcher, cfg.lora.quantize if cfg.lora else "none")
        teacher = load_trainable(teacher_path, tokenizer, cfg.train, cfg.launcher)
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                                      processing_class=tokenizer, peft_config=peft_config(cfg.lora))
        metrics = train_and_save(trainer, tokenizer, ctx, merge_into=student_path if cfg.lora and cfg.lora.merge else None)
        last = next((h for h in reversed(trainer.state.log_history) if "completions/mean_length" in h), {})
        return {**metrics, "prompts": len(dataset), "skipped_rows": prepared["skipped_rows"],
                **{k: last[k] for k in ("entropy", "completions/mean_length", "completions/clipped_ratio") if k in last}}


def _dataset(cfg: DistillConfig, ctx: Context):
    """The prompts as TRL's conversational `prompt` column, converted once (rank 0) into an Arrow copy in the
    stage folder that every rank memory-maps and a resume reuses."""
    def build():
        stats = ReadStats()
        rows = convert_rows(ctx.path(cfg.data), lambda row, where: {"prompt": to_prompt(row, cfg.prompt_column, where)},
                            cfg.on_bad_rows, stats)
        return rows, {"skipped_rows": stats.skipped}

    return prepared_dataset(ctx.out_dir / "dataset", build)
