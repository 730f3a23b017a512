"""`posttrain inspect`: one training example of a stage as its trainer sees it, read through the stage's
own reading code. SFT: the tokenized conversation, trained tokens in [brackets]. DPO (and reward_model,
which reads the same rows): the prompt after the chat template, then the chosen and the rejected
completion, each in [brackets], cut at max_length; an SFT example whose source row names a verifier (the tiny
world's, or any row with `verifier` and its fields) also says whether its target passes it. RLVR: the prompt after the chat template with the
generation prompt, and what its reward is computed from (verifier and ground truth)."""
from posttrain import hf
from posttrain.data import DataError, ReadStats, located_rows
from posttrain.stage import Context


def inspect_stage(kind: str, cfg, ctx: Context, index: int) -> str:
    return INSPECTORS[kind](cfg, ctx, index)


def _sft(cfg, ctx: Context, index: int) -> str:
    from posttrain.stages.sft import inspect_example

    return inspect_example(cfg, ctx, index=index)


def target_check(row: dict, messages: list[dict], cut: bool = False) -> str:
    """Whether an SFT example's target (its last assistant turn) passes the verifier its source row names, read
    as candidate selection verifies kept responses (selection/quality.py); without a verifier, that it is not
    checked. cut: the trainer cuts the example at max_length, so it trains on less than the checked text."""
    name = row.get("verifier")
    if not name:
        return "target not checked: its row names no verifier"
    from posttrain.rewards import score_rows
    from posttrain.selection.quality import VERIFY_FIELDS_DROPPED

    target = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
    try:
        verdict = score_rows([target], [{k: v for k, v in row.items() if k not in VERIFY_FIELDS_DROPPED}],
                             max_failure_fraction=1.0)[0]
    except (KeyError, ValueError) as e:  # a verifier name posttrain does not know
        return f"target not checked: verifier {name!r}: {e}"
    if verdict.failure:
        return f"target not checked: verifier {name} reached no verdict ({verdict.reason})"
    note = "; the trainer sees it cut at max_length" if cut else ""
    return f"target verifies: {'yes' if verdict.score >= 1.0 else 'no'} (verifier {name}: {verdict.reason}{note})"


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
