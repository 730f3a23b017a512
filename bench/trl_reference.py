"""The same training through plain TRL, the way TRL's documentation writes it: load a model and a tokenizer, build
an SFTConfig / DPOConfig / GRPOConfig, hand rows to SFTTrainer / DPOTrainer / GRPOTrainer, call train().

It is the reference posttrain's stages must equal (tests/test_trl_parity.py: same rows in the same order, same
hyperparameters, same losses and masks) and the baseline of their speed (bench/real_model.py). Every argument
that posttrain sets is given here explicitly, because TRL's defaults differ from posttrain's (docs/stages.md).
No posttrain code runs here but the verifier a GRPO reward calls.
"""
import time

# What posttrain's trl_config sets for every trainer on a CPU, written out as a TRL user would.
CPU_ARGS = dict(report_to="none", use_cpu=True, bf16=False, fp16=False, save_strategy="no", logging_steps=1,
                logging_first_step=True, seed=0, data_seed=0, lr_scheduler_type="linear", warmup_steps=0,
                weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", gradient_accumulation_steps=1)


def _model_and_tokenizer(path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), tokenizer


def _checkpointing(config_cls) -> dict:
    name = "activation_checkpointing" if "activation_checkpointing" in config_cls.__dataclass_fields__ else "gradient_checkpointing"
    return {name: False}


def sft(model_path: str, rows: list[dict], out: str, chat_template: str | None = None, **args):
    """rows: {"messages": [...]}; args: SFTConfig's (learning_rate, max_steps, max_length, assistant_only_loss...).
    chat_template: a template with {% generation %} markers, for a model whose own has none (TRL's docs: "manually
    modify the chat template for training")."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = _model_and_tokenizer(model_path)
    if chat_template:
        tokenizer.chat_template = chat_template
    config = SFTConfig(output_dir=out, **CPU_ARGS, **_checkpointing(SFTConfig), **args)
    return _timed(SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer))


def dpo(model_path: str, rows: list[dict], out: str, **args):
    """rows: {"prompt", "chosen", "rejected"}; the reference model is the same checkpoint, loaded again."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = _model_and_tokenizer(model_path)
    reference, _ = _model_and_tokenizer(model_path)
    config = DPOConfig(output_dir=out, **CPU_ARGS, **_checkpointing(DPOConfig), **args)
    return _timed(DPOTrainer(model=model, ref_model=reference, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer))


def numeric_reward(completions, ground_truth, **_):
    """GSM8K's final-number check, as a TRL reward function (one float per completion)."""
    from posttrain.rewards import get_verifier

    verifier = get_verifier("numeric")
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [verifier.check(t, {"ground_truth": g}).score for t, g in zip(texts, ground_truth)]


def grpo(model_path: str, rows: list[dict], out: str, reward_funcs=(numeric_reward,), **args):
    """rows: {"prompt", "ground_truth"}; args: GRPOConfig's (num_generations, max_completion_length, beta...)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = _model_and_tokenizer(model_path)
    config = GRPOConfig(output_dir=out, **CPU_ARGS, **_checkpointing(GRPOConfig), **args)
    return _timed(GRPOTrainer(model=model, reward_funcs=list(reward_funcs), args=config,
                              train_dataset=Dataset.from_list(rows), processing_class=tokenizer))


def _timed(trainer):
    """Train; the trainer gets `train_seconds`, the wall time of train() alone (no loading)."""
    start = time.perf_counter()
    trainer.train()
    trainer.train_seconds = time.perf_counter() - start
    return trainer


def losses(log_history: list[dict]) -> dict[int, float]:
    """step -> logged training loss, from a trainer's log_history or posttrain's metrics.jsonl rows."""
    return {row["step"]: row["loss"] for row in log_history if "loss" in row and "step" in row}
