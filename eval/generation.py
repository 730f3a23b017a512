"""Batched generation for evaluation: HF `generate` on CPU/GPU (left padding, prompts sorted by length,
results in input order), or vLLM when installed. Both are given the same token ids and cut and decode the
completions the same way. Greedy when temperature == 0."""
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from posttrain import hf
from posttrain.formats import as_chat

Prompt = str | list[dict[str, str]]


def load_model_and_tokenizer(path: str | Path, dtype: str = "auto"):
    """An HF folder (or hub id) ready for generation: float32 on CPU, bfloat16 on a GPU that has it
    (dtype="auto"), in eval mode, with a pad token and left padding."""
    return hf.load_for_inference(str(path), dtype=dtype, padding_side="left")


def load_tokenizer(path: str | Path):
    """The tokenizer generation pads with: on the left, so every prompt ends where generation starts."""
    return hf.inference_tokenizer(str(path), padding_side="left")


def prompt_texts(tokenizer, prompts: list[Prompt], chat: bool) -> list[str]:
    """The exact text each prompt is turned into. chat=True applies the chat template with the
    generation prompt (a plain string becomes one user turn); chat=False needs plain strings."""
    if chat:
        if not tokenizer.chat_template:
            raise ValueError("chat=True but the tokenizer has no chat template; set chat: false for a base model "
                             "or give the model a template (posttrain.hf.apply_chat_template)")
        return [tokenizer.apply_chat_template(as_chat(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    bad = next((i for i, p in enumerate(prompts) if not isinstance(p, str)), None)
    if bad is not None:
        raise ValueError(f"chat=False needs plain-string prompts, but prompt {bad} is a message list; "
                         "set chat: true or format the prompt as text")
    return list(prompts)


def encode_prompts(tokenizer, prompts: list[Prompt], chat: bool) -> list[list[int]]:
    """The token ids each prompt is generated from, by either backend. A chat template writes its own BOS, so
    the tokenizer adds none (sending the text to vLLM would add a second one); plain text gets the tokenizer's
    special tokens."""
    return [tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in prompt_texts(tokenizer, prompts, chat)]


def generate(model, tokenizer, prompts: list[Prompt], *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, n: int = 1, seed: int = 0, batch_size: int = 32, chat: bool = True,
             backend: str = "hf") -> list[list[str]]:
    """n decoded completions per prompt (special tokens stripped, cut at the first end-of-turn token),
    in input order. `model` is a loaded PreTrainedModel, a VLLMEngine, or a path (then an engine or model is
    made for this call alone); `tokenizer` may be None with a path."""
    if backend not in ("hf", "vllm"):
        raise ValueError(f"unknown generation backend '{backend}' (use hf or vllm)")
    if backend == "vllm" or isinstance(model, VLLMEngine):
        if not isinstance(model, (str, Path, VLLMEngine)):
            raise ValueError("backend='vllm' needs a model path or a VLLMEngine, not a loaded model")
        return _generate_vllm(model, tokenizer, prompts, chat=chat, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p, n=n, seed=seed)
    if isinstance(model, (str, Path)):
        loaded, own_tokenizer = load_model_and_tokenizer(model)
        model, tokenizer = loaded, tokenizer or own_tokenizer
    return _generate_hf(model, tokenizer, encode_prompts(tokenizer, prompts, chat), max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, n=n, seed=seed, batch_size=batch_size)


def _generate_hf(model, tokenizer, encoded: list[list[int]], *, max_new_tokens: int,
                 temperature: float, top_p: float, n: int, seed: int, batch_size: int) -> list[list[str]]:
    _check_context(model.config, needed_length(encoded, max_new_tokens))
    stop_ids = _stop_ids(model.generation_config, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    greedy = temperature == 0
    sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}
    per_call = 1 if greedy else n  # greedy samples are identical: decode once, repeat
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # longest first: memory errors surface early
    results: list[list[str]] = [[] for _ in encoded]
    device = next(model.parameters()).device
    # A bar on stderr: quiet `posttrain run` reads it from the stage's log for its live progress line.
    for b, start in enumerate(tqdm(range(0, len(order), batch_size), desc="generate", unit="batch", mininterval=2)):
        idx = order[start:start + batch_size]
        input_ids, attention_mask = _left_pad([encoded[i] for i in idx], pad_id)
        torch.manual_seed(seed + b)  # per batch, so a batch's samples don't depend on earlier batches' lengths
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                 max_new_tokens=max_new_tokens, num_return_sequences=per_call, do_sample=not greedy,
                                 eos_token_id=stop_ids, pad_token_id=pad_id, **sampling)
        new_tokens = out[:, input_ids.shape[1]:].tolist()
        for j, i in enumerate(idx):
            for k in range(per_call):
                results[i].append(_decode_until_stop(tokenizer, new_tokens[j * per_call + k], stop_ids))
    return [r * n if greedy else r for r in results]


def _left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        if s:
            ids[row, width - len(s):] = torch.tensor(s)
            mask[row, width - len(s):] = 1
    return ids, mask


def _stop_ids(generation_config, tokenizer) -> list[int]:
    """The tokenizer's end-of-turn ids plus whatever the model's generation_config calls eos."""
    ids = [i for i in hf.end_of_turn_ids(tokenizer) if i is not None]
    configured = getattr(generation_config, "eos_token_id", None)
    for i in configured if isinstance(configured, list) else [configured]:
        if i is not None and i not in ids:
            ids.append(i)
    if not ids:
        raise ValueError("the tokenizer has no eos token, so generation would never stop; set tokenizer.eos_token")
    return ids


def _decode_until_stop(tokenizer, tokens: list[int], stop_ids: list[int]) -> str:
    end = next((i for i, t in enumerate(tokens) if t in stop_ids), len(tokens))
    return tokenizer.decode(tokens[:end], skip_special_tokens=True)


def _check_context(config, needed: int) -> None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit and needed > limit:
        raise ValueError(f"the longest prompt plus max_new_tokens is {needed} tokens, more than the model's context of "
                         f"{limit}: use fewer shots, a smaller max_new_tokens or skip this task")


def needed_length(encoded: list[list[int]], max_new_tokens: int) -> int:
    """The context a generation call needs: its longest prompt plus the tokens to generate."""
    return max((len(e) for e in encoded), default=0) + max_new_tokens


class VLLMEngine:
    """One vLLM engine for one model, sized for the work it is given: max_model_len is the longest prompt plus
    the tokens to generate, not the model's whole context (Llama-3.1's 131,072 tokens need ~16 GiB of KV cache
    for one sequence). Prompts go in as the HF path's token ids. Used as a context manager, it is freed on exit,
    before the next one is built."""

    def __init__(self, path: str | Path, max_model_len: int, seed: int = 0, gpu_memory_utilization: float = 0.9):
        try:
            from vllm import LLM
        except ImportError:
            raise RuntimeError("backend='vllm' but vLLM is not installed: `pip install vllm` on a GPU machine, "
                               "or use backend: hf") from None
        from transformers import AutoConfig, GenerationConfig

        self.path, self.max_model_len = str(path), max_model_len
        name, revision = hf.split_revision(self.path)
        _check_context(AutoConfig.from_pretrained(name, revision=revision), max_model_len)
        try:
            self.generation_config = GenerationConfig.from_pretrained(name, revision=revision)
        except OSError:  # a checkpoint without generation_config.json: the tokenizer's stop ids alone
            self.generation_config = None
        self.llm = LLM(model=name, tokenizer=name, revision=revision, tokenizer_revision=revision, seed=seed,
                       max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization)

    def generate(self, encoded: list[list[int]], stop_ids: list[int], *, max_new_tokens: int, temperature: float,
                 top_p: float, n: int, seed: int) -> list[list[list[int]]]:
        """n completions' token ids per prompt, in input order."""
        from vllm import SamplingParams

        if needed_length(encoded, max_new_tokens) > self.max_model_len:
            raise ValueError(f"this vLLM engine holds {self.max_model_len} tokens, the longest prompt plus max_new_tokens "
                             f"is {needed_length(encoded, max_new_tokens)}: size the engine for every task it serves")
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                                stop_token_ids=stop_ids)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
        return [[list(c.token_ids) for c in o.outputs] for o in outputs]

    def close(self) -> None:
        """Free the engine's GPU memory (its weights and KV cache) so that another can be built."""
        import gc

        # vLLM V1 runs the engine core in a child process that holds the GPU memory until it is shut down.
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(self.llm, "shutdown", None) or getattr(engine_core, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _generate_vllm(model: "str | Path | VLLMEngine", tokenizer, prompts: list[Prompt], *, chat: bool,
                   max_new_tokens: int, temperature: float, top_p: float, n: int, seed: int) -> list[list[str]]:
    """With a path, an engine is built for this call alone, sized for it, and freed after it."""
    tokenizer = tokenizer or load_tokenizer(model.path if isinstance(model, VLLMEngine) else model)
    encoded = encode_prompts(tokenizer, prompts, chat)
    own = not isinstance(model, VLLMEngine)
    with VLLMEngine(model, needed_length(encoded, max_new_tokens), seed) if own else nullcontext(model) as engine:
        stop_ids = _stop_ids(engine.generation_config, tokenizer)
        tokens = engine.generate(encoded, stop_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_p=top_p, n=n, seed=seed)
    return [[_decode_until_stop(tokenizer, t, stop_ids) for t in group] for group in tokens]
