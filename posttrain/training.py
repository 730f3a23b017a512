"""What every training stage shares: the common recipe keys, the mapping onto a TRL config (every key
is used, none ignored), valid-checkpoint discovery and exact resume."""
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from posttrain import hf, tracking, train_checks
from posttrain.final_checkpoint import drop_rows_after, finish_training
from posttrain.stage import Context, Stage


@dataclass
class TrainArgs:
    """Optimisation keys shared by pretrain, sft, dpo and rlvr. Each maps 1:1 onto TRL's config."""

    learning_rate: float = field(default=1e-5, metadata={"gt": 0})
    max_steps: int = field(default=-1, metadata={"ge": -1, "help": "-1: train for num_train_epochs"})
    num_train_epochs: float = field(default=1.0, metadata={"gt": 0})
    per_device_train_batch_size: int = field(default=8, metadata={"ge": 1})
    gradient_accumulation_steps: int = field(default=1, metadata={"ge": 1})
    lr_scheduler_type: str = "linear"
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "e.g. {num_decay_steps: 150} for warmup_stable_decay"})
    warmup_ratio: float = field(default=0.0, metadata={"ge": 0, "lt": 1, "help": "fraction of steps for linear warmup"})
    weight_decay: float = field(default=0.0, metadata={"ge": 0})
    max_grad_norm: float = field(default=1.0, metadata={"ge": 0})
    optim: str = "adamw_torch"
    save_steps: int = field(default=50, metadata={"ge": 1, "help": "checkpoint every N steps (resume granularity)"})
    save_total_limit: int = field(default=2, metadata={"ge": 1})
    logging_steps: int = field(default=5, metadata={"ge": 1})
    seed: int = 0
    precision: Literal["auto", "bf16", "fp16", "fp32"] = field(
        default="auto", metadata={"help": "auto: bf16 where the hardware supports it, else fp32"})
    gradient_checkpointing: bool = False
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = field(default="none", metadata={
        "help": "experiment tracker; a resumed stage continues its tracked run (posttrain.tracking)"})
    trl_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "any other argument of the stage's TRL config, checked against it by name"})


@dataclass
class Lora:
    r: int = field(default=16, metadata={"ge": 1})
    alpha: int = field(default=32, metadata={"ge": 1})
    dropout: float = field(default=0.05, metadata={"ge": 0, "lt": 1})
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    merge: bool = field(default=True, metadata={
        "help": "export full weights: the adapter merged into an unquantized load of the base (else the adapter)"})
    quantize: Literal["none", "4bit", "8bit"] = field(default="none", metadata={
        "help": "QLoRA: load the base in 4-bit NF4 (double quant) or 8-bit; needs CUDA and the [qlora] extra"})


def check_lora(lora: "Lora | None") -> list[tuple[str, str]]:
    """Quantized loading needs a CUDA GPU and bitsandbytes; torch is imported only when it is asked for."""
    if lora is None or lora.quantize == "none":
        return []
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return [("lora.quantize", f"{lora.quantize} needs a CUDA GPU and none is visible here; "
                                  "set lora.quantize: none to train LoRA in full precision")]
    if importlib.util.find_spec("bitsandbytes") is None:
        return [("lora.quantize", f"{lora.quantize} needs bitsandbytes, which is not installed here: "
                                  "pip install 'posttrain[qlora]'")]
    return []


def peft_config(lora: "Lora | None", task_type: str = "CAUSAL_LM"):
    """task_type SEQ_CLS (a reward model) also trains and saves the new `score` head whole (modules_to_save)."""
    if lora is None:
        return None
    from peft import LoraConfig

    targets = lora.target_modules
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type=task_type,
                      target_modules=targets[0] if targets == ["all-linear"] else targets)


@dataclass
class Launcher:
    """How a training stage is launched. `none` runs in this process; the others spawn workers."""

    type: Literal["none", "accelerate", "torchrun"] = "none"
    num_processes: int = field(default=1, metadata={"ge": 1})
    num_machines: int = field(default=1, metadata={"ge": 1})
    deepspeed: str | None = field(default=None, metadata={"help": "zero2, zero3, or a DeepSpeed JSON path"})
    distributed: Literal["ddp", "fsdp2"] = field(default="ddp", metadata={
        "help": "ddp: every process holds the whole model (or DeepSpeed's ZeRO, with `deepspeed`); fsdp2: PyTorch "
                "FSDP2 shards it (CUDA GPUs; what TRL's async GRPO trains under)"})
    timeout_minutes: int = field(default=60, metadata={
        "ge": 1, "help": "process-group timeout: how long a rank waits for the others (e.g. while rank 0 tokenises)"})


def check_launcher(launcher: Launcher) -> list[tuple[str, str]]:
    if launcher.type == "none" and launcher.num_processes * launcher.num_machines > 1:
        return [("launcher.type", "several processes or machines need a launcher: set it to accelerate or torchrun")]
    if launcher.deepspeed and launcher.type == "none":
        return [("launcher.deepspeed", "DeepSpeed runs under a launcher: set launcher.type to accelerate or torchrun")]
    if launcher.deepspeed and launcher.deepspeed not in ("zero2", "zero3") and not Path(launcher.deepspeed).exists():
        return [("launcher.deepspeed", f"{launcher.deepspeed}: not zero2, zero3 or an existing DeepSpeed JSON file")]
    if launcher.distributed == "fsdp2":
        from posttrain.launch import check_fsdp2

        return check_fsdp2(launcher)
    return []


def check_trl_args(config_name: str, train: TrainArgs, stage_args: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems with the `train` block: scheduler and optimizer names as transformers knows them, and
    `train.trl_args` against the fields of TRL's `config_name` (e.g. "SFTConfig") and the arguments set
    elsewhere: by trl_config itself, by a TrainArgs key, or by the stage (`stage_args`, the dict it passes)."""
    problems = _check_names(train) + tracking.check(train.report_to) + train_checks.train_problems(train)
    if not train.trl_args:
        return problems  # TRL is imported only when there is something to check: validation stays fast
    import trl

    from posttrain.schema import suggest

    config_cls = getattr(trl, config_name)
    names = {f.name for f in dataclasses.fields(config_cls)}
    reserved = set_by_posttrain() | set(stage_args) | {f.name for f in dataclasses.fields(TrainArgs)}
    for key in train.trl_args:
        if key not in names:
            problems.append((f"train.trl_args.{key}", f"not an argument of TRL's {config_cls.__name__}{suggest(key, names)}"))
        elif key in reserved:
            problems.append((f"train.trl_args.{key}", "set by posttrain or by a recipe key of its own; set that key instead"))
    return problems + train_checks.trl_value_problems(config_cls, names - reserved, train.trl_args)


def set_by_posttrain() -> set[str]:
    """The TRL arguments trl_config sets itself, read off the code by calling it with a recording config class."""
    from types import SimpleNamespace

    recorded = trl_config(lambda **kwargs: kwargs, TrainArgs(), SimpleNamespace(checkpoints_dir=Path(".")), Launcher())
    return set(recorded) | CHECKPOINTING_NAMES  # which of the two is set depends on the transformers version


def _check_names(train: TrainArgs) -> list[tuple[str, str]]:
    """lr_scheduler_type and optim against transformers' own lists, read from its source: importing
    transformers.trainer_utils would import torch, and validate/plan/config must stay cheap."""
    from posttrain.schema import suggest

    defaults, problems = TrainArgs(), []
    for key, where in (("lr_scheduler_type", "trainer_utils.SchedulerType"), ("optim", "training_args.OptimizerNames")):
        value = getattr(train, key)
        if value == getattr(defaults, key):
            continue
        known = transformers_enum_values(*where.split("."))
        if value not in known:
            problems.append((f"train.{key}", f"unknown {key} {value!r:.80}{suggest(value, known)}; known: {', '.join(known)}"))
    return problems


def transformers_enum_values(module: str, enum: str) -> list[str]:
    """The string values of enum `enum` in transformers/<module>.py, parsed without importing it."""
    import ast
    import importlib.util

    source = Path(importlib.util.find_spec("transformers").origin).parent / f"{module}.py"
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == enum:
            return [stmt.value.value for stmt in node.body if isinstance(stmt, ast.Assign)
                    and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)]
    raise LookupError(f"transformers/{module}.py has no class {enum}")


def trl_config(config_cls, train: TrainArgs, ctx: Context, launcher: "Launcher | None" = None, **stage_args):
    """Build the TRL config from the recipe's keys; nothing is left at a silent default that matters."""
    from posttrain.launch import deepspeed_config, fsdp_args

    common = {f.name: getattr(train, f.name) for f in dataclasses.fields(TrainArgs)
              if f.name not in ("precision", "trl_args", "warmup_ratio", "gradient_checkpointing", "report_to")}
    precision = resolved_precision(train)
    return config_cls(
        output_dir=str(ctx.checkpoints_dir), report_to=tracking.report_to(train.report_to),
        save_strategy="steps", logging_strategy="steps",
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=hf.device() == "cpu", data_seed=train.seed,
        warmup_steps=train.warmup_ratio, logging_first_step=True,
        deepspeed=deepspeed_config(launcher.deepspeed) if launcher else None, **fsdp_args(launcher),
        **{_checkpointing_name(config_cls): train.gradient_checkpointing}, **common, **stage_args, **train.trl_args,
    )


CHECKPOINTING_NAMES = {"activation_checkpointing", "gradient_checkpointing"}


def _checkpointing_name(config_cls) -> str:
    """transformers 5.23 renamed gradient_checkpointing (kept as a deprecated alias) to activation_checkpointing."""
    fields = getattr(config_cls, "__dataclass_fields__", {})  # {} for set_by_posttrain's recorder
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def resolved_precision(train: TrainArgs) -> str:
    return ("bf16" if hf.bf16_supported() else "fp32") if train.precision == "auto" else train.precision


def weights_dtype(train: TrainArgs, launcher: "Launcher | None") -> str:
    """The dtype trainable weights are loaded in. fp32 master weights, with bf16/fp16 as autocast only (as
    TRL's own loader does): a 5e-7 update is below bf16's resolution. DeepSpeed keeps its own fp32 master
    copy, so under it the weights load in bf16 (half the host memory)."""
    if launcher is not None and launcher.deepspeed and resolved_precision(train) == "bf16":
        return "bfloat16"
    return "float32"


def load_trainable(path: str, tokenizer, train: TrainArgs, launcher: "Launcher | None", quantize: str = "none",
                   reward_head: bool = False):
    """A model to train (or a DPO reference), on every rank. Call it after trl_config: under ZeRO-3 the live
    TRL config makes from_pretrained load it partitioned, so no rank holds the whole model in host memory."""
    dtype = "auto" if quantize != "none" else weights_dtype(train, launcher)
    model = hf.load_model(path, dtype=dtype, quantize=quantize, reward_head=reward_head)
    hf.fit_vocab(model, tokenizer)
    return model


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest checkpoint that was written completely. Saves are not atomic and trainer_state.json is
    written last, so a folder without a readable one (or without weights) is a half-written save."""
    if not checkpoints_dir.exists():
        return None
    valid = []
    for d in checkpoints_dir.glob("checkpoint-*"):
        try:
            state = json.loads((d / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if any(d.glob("*.safetensors")) or any(d.glob("adapter_model.*")):
            valid.append((state.get("global_step", -1), d))
    return max(valid)[1] if valid else None


class TrainingStage(Stage):
    """A stage that trains with a TRL trainer: it resumes from its newest complete checkpoint."""

    def progress(self, cfg: Any, out_dir: Path) -> str | None:
        found = latest_checkpoint(out_dir / "checkpoints")
        return f"a valid checkpoint ({found.name})" if found else None


def resume_point(ctx: Context) -> Path | None:
    """Which checkpoint to resume from, per the resume mode: off, on (must exist), auto, or a path."""
    if ctx.resume == "off":
        return None
    if ctx.resume not in ("on", "auto"):
        path = Path(ctx.resume)
        if not (path / "trainer_state.json").exists():
            raise FileNotFoundError(f"resume={ctx.resume}: not a complete checkpoint (no trainer_state.json)")
        return path
    found = latest_checkpoint(ctx.checkpoints_dir)
    if ctx.resume == "on" and found is None:
        raise FileNotFoundError(f"resume=on but {ctx.checkpoints_dir} holds no complete checkpoint")
    return found


def metrics_to_run_store(ctx: Context, trainer):
    """A callback that mirrors the trainer's logs into the stage's metrics.jsonl (the report's curves) and
    makes a resumed run log what an uninterrupted one does:
    - every checkpoint step is also a logging step, so no logging interval straddles a checkpoint: the loss,
      entropy, accuracy... averaged over an interval are then whole after a resume (the running sums of
      a half-done interval are not in the checkpoint);
    - the running totals behind `train_loss` and SFT/DPO's `num_tokens`, which the trainer keeps outside
      its state, are saved in the checkpoint's trainer_state.json and restored;
    - on resume, rows after the checkpoint are dropped first, so replayed steps are not logged twice."""
    from transformers import TrainerCallback  # here, not at the top: validation and cached runs skip it
    from transformers.trainer_callback import ExportableState

    class MetricsToRunStore(TrainerCallback, ExportableState):
        def state(self) -> dict:
            return {"args": {}, "attributes": {"total_loss": getattr(trainer, "_total_loss_scalar", 0.0),
                                               "total_tokens": getattr(trainer, "_total_train_tokens", 0)}}

        def on_train_begin(self, args, state, control, **kwargs):
            saved = state.stateful_callbacks.get(type(self).__name__, {}).get("attributes", {})
            if state.global_step and "total_loss" in saved:
                trainer._total_loss_scalar = saved["total_loss"]
                trainer._total_train_tokens = saved["total_tokens"]
            trainer._initial_global_step = 0  # train_loss: the mean over all steps, not those since the resume
            drop_rows_after(ctx.out_dir / "metrics.jsonl", state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:  # set by the trainer's flow callback, which runs before this one
                control.should_log = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                ctx.log_metrics({k: v for k, v in logs.items() if isinstance(v, (int, float))}, step=state.global_step)

    return MetricsToRunStore()


def train_and_save(trainer, tokenizer, ctx: Context, merge_into: str | None = None) -> dict[str, Any]:
    """Train (resuming where the checkpoints allow), save the final model, return headline metrics.
    merge_into: the base checkpoint a LoRA adapter is merged into for export (None: save the adapter)."""
    checkpoint, resumed_step = resume_point(ctx), None
    if checkpoint is not None:
        ctx.info(f"resuming from {checkpoint}")
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        resumed_step = state.get("global_step", 0)
        if state.get("global_step", 0) >= state.get("max_steps", float("inf")) > 0:
            # Resuming a finished checkpoint would train one extra step: load its weights instead, and do what
            # the trainer's end did not (stages read their headline metrics from its state, as after a real run).
            _load_weights(trainer.model, checkpoint)
            finish_training(trainer, ctx, state)
            return _finish(trainer, tokenizer, ctx, merge_into)
    trainer.add_callback(metrics_to_run_store(ctx, trainer))
    tracked = tracking.start(trainer, ctx.out_dir, resumed_step)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return _finish(trainer, tokenizer, ctx, merge_into) | ({"tracking": tracked} if tracked else {})


def _load_weights(model, checkpoint: Path) -> None:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        state.update(load_file(f))
    if hasattr(model, "peft_config"):  # an adapter checkpoint: its keys leave out the adapter's name
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
    elif not _partitioned(model):
        model.load_state_dict(state, strict=False)
    else:  # ZeRO-3: every rank enters each gather; rank 0's copy is scattered back on exit
        from deepspeed import zero

        for name, param in model.named_parameters():
            with zero.GatheredParameters([param], modifier_rank=0):
                if _is_rank0() and name in state:
                    param.data.copy_(state[name])


def _partitioned(model) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def full_state_dict(model) -> dict | None:
    """The model's whole state, on rank 0 (None elsewhere); None too when its parameters are whole already.
    Under ZeRO-3 each parameter is gathered in turn, a collective that every rank must enter, and rank 0
    keeps a CPU copy: calling this on rank 0 alone would hang, and saving without it writes 0-shaped tensors."""
    if not _partitioned(model):
        return None
    from deepspeed import zero

    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())  # buffers are never partitioned
    state = {k: v.cpu() for k, v in model.state_dict().items() if k in buffers} if _is_rank0() else None
    for name, param in params.items():
        with zero.GatheredParameters([param]):
            if state is not None:
                state[name] = param.detach().cpu().clone()
    return state


def export_model(model, tokenizer, out: Path, merge_into: str | None, state_dict: dict | None = None) -> None:
    """Save the trained model as an HF folder (rank 0 only; `state_dict` from full_state_dict under ZeRO-3).
    A LoRA adapter is merged into a fresh, unquantized load of the base checkpoint `merge_into`: merging into
    a 4/8-bit base in place would round the result to its grid."""
    if merge_into is not None and hasattr(model, "merge_and_unload"):
        model, state_dict = merge_adapter(model, merge_into, state_dict), None
    hf.save_model(model, tokenizer, out, state_dict=state_dict)


def merge_adapter(peft_model, base: str, state_dict: dict | None = None):
    """Full weights: the trained adapter, as saved, loaded onto the base checkpoint and merged."""
    import tempfile

    from peft import PeftModel

    reward_head = peft_model.peft_config["default"].task_type == "SEQ_CLS"  # its saved score head replaces the new one
    with tempfile.TemporaryDirectory() as adapter_dir:
        peft_model.save_pretrained(adapter_dir, state_dict=state_dict)
        with hf.whole_loading():  # under ZeRO-3 only rank 0 merges, so nothing here may be partitioned
            base_model = hf.load_model(base, reward_head=reward_head)
            return PeftModel.from_pretrained(base_model, adapter_dir).merge_and_unload()


def _finish(trainer, tokenizer, ctx: Context, merge_into: str | None) -> dict[str, Any]:
    # On every rank: the gathers are collective. FSDP2's full state dict comes from accelerate (rank 0 holds it).
    fsdp = getattr(trainer, "is_fsdp_enabled", False)
    state_dict = trainer.accelerator.get_state_dict(trainer.model) if fsdp else full_state_dict(trainer.model)
    if trainer.is_world_process_zero():
        export_model(trainer.model, tokenizer, ctx.output("model"), merge_into, state_dict)
    trainer.accelerator.wait_for_everyone()  # no rank reports done before the export exists
    history = [h for h in trainer.state.log_history if "loss" in h]
    # what `precision: auto` became on this hardware (the report shows it beside the recipe's setting)
    precision = "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32"
    metrics: dict[str, Any] = {"global_step": trainer.state.global_step, "precision": precision}
    if history:
        metrics["first_loss"] = history[0]["loss"]
        metrics["final_loss"] = history[-1]["loss"]
    return metrics
