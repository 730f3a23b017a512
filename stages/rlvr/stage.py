"""Reinforcement learning with verifiable rewards, on TRL's GRPOTrainer.

Each reward term names a verifier from posttrain.rewards and scores every row with it, whatever the row's
own `verifier` column says; only the term named `verifier` routes each row to the verifier its route column
names (Tülu 3's mixed GSM8K/MATH/IFEval data). A term named `model` is a reward model's score, and `gate`
makes a term count only where another passes (reward_terms.py, beside this file). So a `length` or `format`
term beside a routed correctness term is its own series in the logs (rewards/<term>/mean), never the row's
verifier counted twice. Tülu 3's shaping is `verified_reward: 10` (the value of a verified answer) and
`eos_penalty` (subtracted when a completion ends without an end-of-turn token). Checkpoints must fall on
generation-buffer boundaries (validated), so resume is exact. With `lora`, adapters train (the KL reference
is the adapter-free model) and merge into the export, as in sft.
"""
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from posttrain import hf
from posttrain.data import DataError, located_rows
from posttrain.formats import as_chat
from posttrain.stage import Context, Dataset, Model, register
from posttrain.training import (TrainingStage, Launcher, Lora, TrainArgs, check_launcher, check_lora, check_trl_args,
                                load_trainable, peft_config, train_and_save, trl_config)
from posttrain.stages.rlvr import dynamic_sampling, vllm_correction
from posttrain.stages.rlvr.async_gen import AsyncGeneration, check_async, run_async
from posttrain.stages.rlvr.dynamic_sampling import DynamicSampling
from posttrain.stages.rlvr.tools import Tools, check_tools, grpo_tool_args, prepare_tokenizer, tool_functions

ROUTE_BY_ROW = "verifier"


@dataclass
class RewardTerm:
    name: str = field(metadata={"help": "a verifier from posttrain.rewards, scoring every row whatever its column says; "
                                        "`verifier`: each row's own; or `model`: a reward model's score"})
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    model: Model | None = field(default=None, metadata={"help": "for `model`: a sequence classifier, e.g. ${stages.rm.output.model}"})
    gate: str | None = field(default=None, metadata={
        "help": "another term's name: this term counts only where that term's reward is > 0 (e.g. verifier)"})
    batch_size: int = field(default=32, metadata={"ge": 1, "help": "for `model`: completions per forward pass"})


@dataclass
class VLLM:
    mode: Literal["none", "colocate", "server"] = "none"
    server_host: str = "127.0.0.1"
    server_port: int = 8000
    gpu_memory_utilization: float = field(default=0.3, metadata={"gt": 0, "le": 1})
    importance_sampling: vllm_correction.ImportanceSampling = field(default_factory=vllm_correction.ImportanceSampling)


@dataclass
class RLVRConfig:
    model: Model
    data: Dataset = field(metadata={"help": "rows with a prompt, `ground_truth` and (for routing) a verifier column"})
    prompt_column: str = field(default="prompt", metadata={"help": "a chat (list of messages) or a plain string"})
    route_column: str = field(default="verifier", metadata={"help": "the column naming each row's verifier (Tülu 3: dataset)"})
    route_map: dict[str, str] = field(default_factory=dict, metadata={"help": "route_column value -> verifier, e.g. {MATH: math}"})
    rewards: list[RewardTerm] = field(default_factory=lambda: [RewardTerm(ROUTE_BY_ROW)])
    verified_reward: float = field(default=1.0, metadata={"gt": 0, "help": "reward of a verified answer (Tülu 3: 10)"})
    eos_penalty: float = field(default=0.0, metadata={"ge": 0, "help": "subtracted when a completion has no end-of-turn token"})
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    beta: float = field(default=0.0, metadata={"ge": 0, "help": "KL coefficient (Tülu 3: 0.05; OLMo 2 GRPO: 0.01)"})
    num_generations: int = field(default=8, metadata={"ge": 2})
    temperature: float = field(default=1.0, metadata={"gt": 0})
    max_completion_length: int = field(default=256, metadata={"ge": 1})
    mask_truncated_completions: bool = False
    steps_per_generation: int | None = field(default=None, metadata={"ge": 1})
    num_iterations: int = field(default=1, metadata={"ge": 1})
    epsilon: float = field(default=0.2, metadata={"gt": 0})
    scale_rewards: Literal["group", "batch", "none"] = "group"
    chat_template: str = "model"
    reward_timeout_s: float = field(default=5.0, metadata={"gt": 0, "help": "CPU seconds per completion (or the verifier's own, if longer); wall-clock backstop 3x + 1 s"})
    max_reward_failure_fraction: float = field(default=0.5, metadata={"ge": 0, "le": 1})
    vllm: VLLM = field(default_factory=VLLM)
    dynamic_sampling: DynamicSampling = field(default_factory=DynamicSampling)
    lora: Lora | None = field(default=None, metadata={"help": "train adapters; the KL reference is the adapter-free model"})
    tools: Tools | None = field(default=None, metadata={"help": "Python tools the policy may call, run in the code sandbox"})
    async_generation: AsyncGeneration | None = field(default=None, metadata={
        "help": "TRL's async GRPO: a vLLM server generates while the trainer trains (FSDP2, not DeepSpeed)"})
    train: TrainArgs = field(default_factory=TrainArgs)
    launcher: Launcher = field(default_factory=Launcher)


def reward_functions(cfg: RLVRConfig, stop_ids: list[int], path: Callable[[str], str] | None = None
                     ) -> tuple[list, list[float]]:
    """One TRL reward function per term (named after it, so TRL logs rewards/<name>/mean), plus the EOS term;
    a gated term's series is its reward after the gate. path: resolves a `model` term's model (the stage passes
    ctx.path, which also finds an upstream stage's output); without it the model is a folder as written.
    Verifier terms log their failure shares (reward_terms.VerifiedTerm)."""
    from posttrain.stages.rlvr.reward_terms import MODEL_TERM, VerifiedTerm, gated, model_reward, remembered

    def term_fn(term: RewardTerm):
        if term.name == MODEL_TERM:
            return model_reward(path(term.model) if path else term.model, term.batch_size)
        return VerifiedTerm(term.name, None if term.name == ROUTE_BY_ROW else term.name, cfg.verified_reward,
                            term.options, cfg.reward_timeout_s, cfg.max_reward_failure_fraction)

    def eos(completion_ids, **_):
        return [0.0 if ids and ids[-1] in stop_ids else -cfg.eos_penalty for ids in completion_ids]

    own = [remembered(term_fn(t)) for t in cfg.rewards]
    by_name = dict(zip((t.name for t in cfg.rewards), own))  # a gate names a term that is the only one so named
    funcs = [gated(f, by_name[t.gate]) if t.gate else f for t, f in zip(cfg.rewards, own)]
    weights = [t.weight for t in cfg.rewards]
    if cfg.eos_penalty:
        funcs.append(eos)
        weights.append(1.0)
    return funcs, weights


def routed(row: dict, cfg: RLVRConfig, where: str) -> dict:
    """The row with `verifier` set from its route column (mapped through route_map) when a term routes by row."""
    by_row = any(t.name == ROUTE_BY_ROW for t in cfg.rewards)
    missing = [c for c in (cfg.prompt_column, cfg.route_column if by_row else None) if c and c not in row]
    if missing:
        raise DataError(f"{where}: missing column `{missing[0]}`; it has: {', '.join(sorted(row)[:8])}")
    if by_row:
        row = {**row, "verifier": cfg.route_map.get(row[cfg.route_column], row[cfg.route_column])}
    return row


def _steps_per_generation(cfg: RLVRConfig) -> int:
    return cfg.steps_per_generation or cfg.train.gradient_accumulation_steps


def _save_steps_problem(cfg: RLVRConfig) -> list[tuple[str, str]]:
    """TRL generates once per steps_per_generation x num_iterations micro-batches and reuses that buffer until
    then; a resumed trainer starts with an empty buffer and generates afresh. So a checkpoint is exact only at
    a buffer boundary: global step s (s x gradient_accumulation_steps micro-batches) must be a multiple of it."""
    buffer = _steps_per_generation(cfg) * cfg.num_iterations  # micro-batches per generation
    every = buffer // math.gcd(buffer, cfg.train.gradient_accumulation_steps)  # optimizer steps per boundary
    if cfg.train.save_steps % every == 0:
        return []
    allowed = ", ".join(str(every * k) for k in range(1, 4))
    return [("train.save_steps", f"{cfg.train.save_steps} puts checkpoints inside a generation buffer, which do not "
             f"resume exactly: TRL generates every steps_per_generation ({_steps_per_generation(cfg)}) x num_iterations "
             f"({cfg.num_iterations}) micro-batches = every {every} optimizer step(s) at gradient_accumulation_steps "
             f"{cfg.train.gradient_accumulation_steps}; use a multiple of {every} ({allowed}, ...)")]


def _grpo_args(cfg: RLVRConfig, reward_weights: list[float] | None, max_model_length: int | None = None) -> dict:
    """The GRPOConfig arguments this stage sets from its own keys (so train.trl_args may not). A colocated
    engine holds max_model_length tokens (the longest prompt plus max_completion_length); without it vLLM
    would size its KV cache for the model's whole context (131,072 tokens for Llama-3.1) and not start."""
    vllm = {} if cfg.vllm.mode == "none" else {
        "vllm_mode": cfg.vllm.mode, "vllm_server_host": cfg.vllm.server_host,
        "vllm_server_port": cfg.vllm.server_port, "vllm_gpu_memory_utilization": cfg.vllm.gpu_memory_utilization,
        "vllm_max_model_length": max_model_length, **vllm_correction.grpo_args(cfg.vllm.mode, cfg.vllm.importance_sampling)}
    return dict(loss_type=cfg.loss_type, beta=cfg.beta, num_generations=cfg.num_generations, temperature=cfg.temperature,
                max_completion_length=cfg.max_completion_length, mask_truncated_completions=cfg.mask_truncated_completions,
                steps_per_generation=_steps_per_generation(cfg), num_iterations=cfg.num_iterations, epsilon=cfg.epsilon,
                scale_rewards=cfg.scale_rewards, reward_weights=reward_weights, use_vllm=cfg.vllm.mode != "none", **vllm,
                **grpo_tool_args(cfg.tools))


@register
class RLVR(TrainingStage):
    kind = "rlvr"
    Config = RLVRConfig
    outputs = {"model": Model}
    description = "RL with verifiable rewards (TRL GRPOTrainer)"

    def check(self, cfg: RLVRConfig) -> list[tuple[str, str]]:
        from posttrain.rewards import list_verifiers
        from posttrain.schema import suggest

        from posttrain.stages.rlvr.reward_terms import MODEL_TERM, term_problems

        problems = (check_launcher(cfg.launcher) + check_lora(cfg.lora) + term_problems(cfg.rewards)
                    + check_trl_args("GRPOConfig", cfg.train, _grpo_args(cfg, reward_weights=None)))
        problems += check_tools(cfg.tools, cfg.chat_template) + check_async(cfg)
        known = list_verifiers()
        for value, name in cfg.route_map.items():
            if name not in known:
                problems.append((f"route_map.{value}", f"unknown verifier '{name}'{suggest(name, known)}"))
        for i, term in enumerate(cfg.rewards):
            if term.name not in (ROUTE_BY_ROW, MODEL_TERM) and term.name not in known:
                problems.append((f"rewards[{i}].name", f"unknown verifier '{term.name}'{suggest(term.name, known)}; "
                                                       f"known: {ROUTE_BY_ROW}, {MODEL_TERM}, {', '.join(known)}"))
        world = cfg.launcher.num_processes * cfg.launcher.num_machines
        if (cfg.train.per_device_train_batch_size * world) % cfg.num_generations:
            problems.append(("train.per_device_train_batch_size", f"counts completions: "
                             f"{cfg.train.per_device_train_batch_size} x {world} process(es) must be divisible by "
                             f"num_generations={cfg.num_generations}"))
        problems += _save_steps_problem(cfg)
        if cfg.vllm.mode != "none":
            problems += hf.vllm_problem("vllm.mode", cfg.vllm.mode)
            problems += vllm_correction.check(cfg.vllm.importance_sampling, cfg.loss_type)
        problems += dynamic_sampling.check(cfg.dynamic_sampling, cfg.train.per_device_train_batch_size,
                                           _steps_per_generation(cfg), cfg.num_generations)
        return problems

    def check_upstream(self, cfg: RLVRConfig, kinds: dict[str, str]) -> list[tuple[str, str]]:
        from posttrain.stages.rlvr.reward_terms import reward_model_refs

        return reward_model_refs(cfg.rewards, kinds)

    def run(self, cfg: RLVRConfig, ctx: Context) -> dict:
        from datasets import Dataset as HFDataset
        from trl import GRPOConfig, GRPOTrainer

        rows = [routed(r, cfg, where) for where, r in located_rows(ctx.path(cfg.data))]
        # Rows differ in their fields across verifiers; one JSON column keeps each row whole for its verifier.
        dataset = HFDataset.from_list([{"prompt": as_chat(r[cfg.prompt_column]), "row_json": json.dumps(r)} for r in rows])
        model_path = ctx.path(cfg.model)
        tokenizer = hf.load_tokenizer(model_path, cfg.chat_template)
        tokenizer.padding_side = "left"
        if cfg.tools:
            prepare_tokenizer(tokenizer, model_path)
        funcs, weights = reward_functions(cfg, hf.end_of_turn_ids(tokenizer), ctx.path)
        from posttrain.eval.generation import encode_prompts, needed_length

        length = None
        if cfg.vllm.mode != "none":  # TRL's vLLM path generates from the same chat-template ids
            length = needed_length(encode_prompts(tokenizer, dataset["prompt"], chat=True), cfg.max_completion_length)
        if cfg.vllm.mode == "server":
            check_server(cfg, model_path, length)
        if cfg.async_generation:
            return run_async(cfg, ctx, dataset, tokenizer, model_path, ROUTE_BY_ROW)
        args = trl_config(GRPOConfig, cfg.train, ctx, cfg.launcher, **_grpo_args(cfg, weights, length))
        # Loaded after the TRL config on purpose: under ZeRO-3 it then loads partitioned (see load_trainable).
        model = load_trainable(model_path, tokenizer, cfg.train, cfg.launcher, cfg.lora.quantize if cfg.lora else "none")
        trainer_cls = dynamic_sampling.trainer_class(GRPOTrainer, cfg.dynamic_sampling)
        trainer = trainer_cls(model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=peft_config(cfg.lora), tools=tool_functions(cfg.tools) if cfg.tools else None)
        metrics = train_and_save(trainer, tokenizer, ctx, merge_into=model_path if cfg.lora and cfg.lora.merge else None)
        rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
        if rewards:
            metrics.update(first_reward=rewards[0], final_reward=rewards[-1])
        if any(t.name in ("code", ROUTE_BY_ROW) for t in cfg.rewards):  # say which sandbox ran the programs
            from posttrain.rewards.sandbox import sandbox_kind

            metrics["code_sandbox"] = sandbox_kind()
        return metrics


def check_server(cfg: RLVRConfig, model_path: str, length: int) -> None:
    """Server mode generates on a `trl vllm-serve` started by hand for this stage's input model, on GPUs the
    training leaves free. Nothing starts it (the model exists only mid-recipe): say how, before any model loads."""
    import urllib.request

    import torch

    host, port, gpus = cfg.vllm.server_host, cfg.vllm.server_port, torch.cuda.device_count()
    serve = (f"CUDA_VISIBLE_DEVICES={max(gpus - 1, 0)} trl vllm-serve --model {model_path} --max_model_len {length} "
             f"--host {host} --port {port}")
    if host in ("127.0.0.1", "localhost") and gpus and cfg.launcher.num_processes >= gpus:
        raise DataError(f"vllm.mode server: training takes all {gpus} GPUs of this machine (launcher.num_processes="
                        f"{cfg.launcher.num_processes}), so none is left for the vLLM server; set launcher.num_processes "
                        f"to {gpus - 1} and start the server on the last GPU: {serve}")
    try:
        urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5).close()
    except OSError as e:
        raise DataError(f"vllm.mode server: no vLLM server answers at http://{host}:{port} ({e}). Start one for this "
                        f"stage's model on a GPU that training does not use (launcher.num_processes counts the others), "
                        f"then run this stage again: {serve}; or set vllm.mode: colocate") from None
