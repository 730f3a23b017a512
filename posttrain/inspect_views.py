"""`posttrain inspect`: one training example of a stage as its trainer sees it, read through the stage's
own reading code. SFT: the tokenized conversation, trained tokens in [brackets]. DPO (and reward_model,
which reads the same rows): the prompt after the chat template, then the chosen and the rejected
completion, each in [brackets], cut at max_length. RLVR: the prompt after the chat template with the
generation prompt, and what its reward is computed from (verifier and ground truth)."""
from posttrain import hf
from posttrain.data import DataError, ReadStats, located_rows
from posttrain.stage import Context


def inspect_stage(kind: str, cfg, ctx: Context, index: int) -> str:
    return INSPECTORS[kind](cfg, ctx, index)


def _sft(cfg, ctx: Context, index: int) -> str:
    from posttrain.stages.sft import inspect_example

    return inspect_example(cfg, ctx, index=index)


def _pair(cfg, ctx: Context, index: int) -> str:
    from posttrain.stages.dpo import read_pairs

    tokenizer = hf.load_tokenizer(ctx.path(cfg.model), cfg.chat_template)
    pair = _nth(read_pairs(cfg, ctx, tokenizer, ReadStats()), index, "preference pairs")
    prompt = _ids(tokenizer, pair["prompt"], add_generation_prompt=True)
    lines = [f"pair {index}: prompt {len(prompt)} tokens; max_length {cfg.max_length} (prompt + completion)"]
    for side in ("chosen", "rejected"):
        full = _ids(tokenizer, pair["prompt"] + pair[side])
        if full[:len(prompt)] != prompt:  # a template that renders the prompt differently once answered
            lines.append(f"note: the chat template renders the prompt differently before the {side} answer")
        completion = full[len(prompt):]
        kept = completion[:max(0, cfg.max_length - len(prompt))]
        cut = f", cut to {len(kept)} by max_length" if len(kept) < len(completion) else ""
        lines += [f"--- {side}: {len(completion)} completion tokens{cut}",
                  tokenizer.decode(prompt) + "[" + tokenizer.decode(kept) + "]"]
    return "\n".join(lines)


def _prompt(cfg, ctx: Context, index: int) -> str:
    from posttrain.formats import as_chat
    from posttrain.stages.rlvr.stage import routed

    rows = [routed(r, cfg, where) for where, r in located_rows(ctx.path(cfg.data))]
    row = _nth(rows, index, "RL prompts")
    tokenizer = hf.load_tokenizer(ctx.path(cfg.model), cfg.chat_template)
    prompt = _ids(tokenizer, as_chat(row[cfg.prompt_column]), add_generation_prompt=True)
    scored = {k: v for k, v in row.items() if k != cfg.prompt_column}
    return (f"prompt {index}: {len(prompt)} tokens; {cfg.num_generations} completions of at most "
            f"{cfg.max_completion_length} tokens are sampled from it\n{tokenizer.decode(prompt)}\n"
            f"--- the reward terms ({', '.join(t.name for t in cfg.rewards)}) read: "
            + ", ".join(f"{k}={str(v)[:200]!r}" for k, v in scored.items()))


def _ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                              add_generation_prompt=add_generation_prompt)["input_ids"])


def _nth(rows: list, index: int, what: str):
    if index >= len(rows):
        raise DataError(f"--index {index}: the stage reads {len(rows)} {what} (0 to {len(rows) - 1})")
    return rows[index]


INSPECTORS = {"sft": _sft, "dpo": _pair, "reward_model": _pair, "rlvr": _prompt}
