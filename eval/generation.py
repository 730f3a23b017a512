"""Batched generation for evaluation: HF `generate` on CPU/GPU (left padding, prompts sorted by length,
results in input order), or vLLM when installed. Greedy when temperature == 0."""
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from posttrain import hf
from posttrain.data import as_chat

Prompt = str | list[dict[str, str]]


def load_model_and_tokenizer(path: str | Path, dtype: str = "auto"):
    """An HF folder (or hub id) ready for generation: float32 on CPU, bfloat16 on a GPU that has it
    (dtype="auto"), in eval mode, with a pad token and left padding."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = hf.load_model(str(path), dtype=dtype).to(hf.device()).eval()
    return model, tokenizer


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


def generate(model, tokenizer, prompts: list[Prompt], *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, n: int = 1, seed: int = 0, batch_size: int = 32, chat: bool = True,
             backend: str = "hf") -> list[list[str]]:
    """n decoded completions per prompt (special tokens stripped, cut at the first end-of-turn token),
    in input order. `model` is a loaded PreTrainedModel or a path; `tokenizer` may be None with a path."""
    if isinstance(model, (str, Path)):
        if backend == "vllm":
            return _generate_vllm(str(model), prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_p=top_p, n=n, seed=seed, chat=chat)
        loaded, own_tokenizer = load_model_and_tokenizer(model)
        model, tokenizer = loaded, tokenizer or own_tokenizer
    elif backend == "vllm":
        raise ValueError("backend='vllm' needs a model path, not a loaded model")
    if backend != "hf":
        raise ValueError(f"unknown generation backend '{backend}' (use hf or vllm)")
    texts = prompt_texts(tokenizer, prompts, chat)
    return _generate_hf(model, tokenizer, texts, add_special_tokens=not chat, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, n=n, seed=seed, batch_size=batch_size)


def _generate_hf(model, tokenizer, texts: list[str], *, add_special_tokens: bool, max_new_tokens: int,
                 temperature: float, top_p: float, n: int, seed: int, batch_size: int) -> list[list[str]]:
    # A chat template writes its own BOS; plain text gets the tokenizer's special tokens.
    encoded = [tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts]
    _check_context(model, encoded, max_new_tokens)
    stop_ids = _stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    greedy = temperature == 0
    sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}
    per_call = 1 if greedy else n  # greedy samples are identical: decode once, repeat
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))  # longest first: memory errors surface early
    results: list[list[str]] = [[] for _ in texts]
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


def _stop_ids(model, tokenizer) -> list[int]:
    """The tokenizer's end-of-turn ids plus whatever the model's generation_config calls eos."""
    ids = [i for i in hf.end_of_turn_ids(tokenizer) if i is not None]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in configured if isinstance(configured, list) else [configured]:
        if i is not None and i not in ids:
            ids.append(i)
    if not ids:
        raise ValueError("the tokenizer has no eos token, so generation would never stop; set tokenizer.eos_token")
    return ids


def _decode_until_stop(tokenizer, tokens: list[int], stop_ids: list[int]) -> str:
    end = next((i for i, t in enumerate(tokens) if t in stop_ids), len(tokens))
    return tokenizer.decode(tokens[:end], skip_special_tokens=True)


def _check_context(model, encoded: list[list[int]], max_new_tokens: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max((len(e) for e in encoded), default=0)
    if limit and longest + max_new_tokens > limit:
        raise ValueError(f"the longest prompt has {longest} tokens; with max_new_tokens={max_new_tokens} that exceeds "
                         f"the model's context of {limit}: use fewer shots, a smaller max_new_tokens or skip this task")


def _generate_vllm(path: str, prompts: list[Prompt], *, max_new_tokens: int, temperature: float, top_p: float,
                   n: int, seed: int, chat: bool) -> list[list[str]]:
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise RuntimeError("backend='vllm' but vLLM is not installed: `pip install vllm` on a GPU machine, "
                           "or use backend: hf") from None
    llm = LLM(model=path, seed=seed)
    texts = prompt_texts(llm.get_tokenizer(), prompts, chat)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                            skip_special_tokens=True)
    outputs: list[Any] = llm.generate(texts, params)
    return [[c.text for c in o.outputs] for o in outputs]
