"""Held-out answer perplexity: the negative log-likelihood of reference answers under a model, per item, the way
pruning papers report WikiText perplexity but on the held-out benchmarks' own reference answers (GSM8K's worked
solutions, MBPP's and HumanEval's reference programs), each after its question in the model's chat template, the
answer ending with the template's end of turn. Forward passes only; no generation."""
from posttrain.eval.tasks import TASKS, resolve_source

ANSWER_TASKS = ("gsm8k_0shot", "mbpp", "humaneval")


def reference_answer(task: str, item: dict) -> str:
    if task == "humaneval":  # the whole function, as the task's prompt asks for it
        return f"```python\n{item['code_prompt']}{item['ground_truth']}```"
    return item["answer"]


def answer_items(task: str, limit: int) -> list[dict]:
    """The first `limit` items of a built-in task as {id, task, prompt (a chat), answer}."""
    if task not in ANSWER_TASKS:
        raise ValueError(f"answer perplexity needs a task with reference answers: one of {', '.join(ANSWER_TASKS)}")
    spec = TASKS[task]
    return [{"id": item["id"], "task": task, "prompt": [{"role": "user", "content": item["question"]}],
             "answer": reference_answer(task, item)}
            for item in spec.items(resolve_source(spec.source))[:limit]]


def encode(tokenizer, item: dict, max_length: int) -> tuple[list[int], int]:
    """(token ids of question + answer, where the answer starts); the answer is cut at max_length tokens in all."""
    prompt = tokenizer.apply_chat_template(item["prompt"], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(item["prompt"] + [{"role": "assistant", "content": item["answer"]}],
                                         tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(f"{item['id']}: the chat template renders the question differently once an answer follows; "
                         "answer perplexity needs the answer to extend the prompt")
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False).input_ids
    return (prompt_ids + answer_ids)[:max_length], len(prompt_ids)


def answer_nll(model, tokenizer, items: list[dict], batch_size: int = 8, max_length: int = 512) -> list[dict]:
    """Per item: {id, task, nll (summed over the answer's tokens, nats), tokens}. Right-padded batches of similar
    length; padding never enters a sum."""
    import torch

    encoded = [encode(tokenizer, item, max_length) for item in items]
    order = sorted(range(len(items)), key=lambda i: len(encoded[i][0]))
    out: list[dict | None] = [None] * len(items)
    for at in range(0, len(order), batch_size):
        batch = order[at:at + batch_size]
        width = max(len(encoded[i][0]) for i in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):
            tokens = encoded[i][0]
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, :len(tokens)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(2, ids[:, 1:, None])[..., 0]
        for row, i in enumerate(batch):
            tokens, start = encoded[i]
            answer = logp[row, start - 1:len(tokens) - 1]  # position t predicts token t + 1
            out[i] = {"id": items[i]["id"], "task": items[i]["task"], "nll": float(-answer.sum()),
                      "tokens": int(answer.numel())}
    return out


def perplexity(records: list[dict]) -> float:
    """exp(summed NLL / summed tokens): token-weighted, as corpus perplexity is."""
    import math

    return math.exp(sum(r["nll"] for r in records) / sum(r["tokens"] for r in records))
