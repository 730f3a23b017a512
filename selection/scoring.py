"""Forward-pass scoring of responses under causal LMs, batched, length-sorted and resumable.

Token boundary: the prompt and the response are rendered into one text and tokenized once, with character
offsets. A token belongs to the response when it covers any response character, so a token that merges
the prompt's trailing space with the response's first word (" The" in BPE vocabularies) counts as a
response token; tokenizing the prompt alone would give a different, wrong boundary there. Only the
response tokens are scored; each is predicted from everything before it.

Too-long texts are cut from the left (the prompt start goes first) to `max_length` tokens.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from posttrain.data import DataError
from posttrain.formats import Example
from posttrain.hf import split_revision
from posttrain.selection import ranks

PAPER_TEMPLATE = "Question: {instruction} \n Answer: {response}"  # GRAPE paper's plain format


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    start: int  # index of the first response token (>= 1: it needs a token before it)
    end: int    # one past the last response token


class Formatter:
    """Renders an Example as text (plain template or the tokenizer's chat template) and tokenizes it."""

    def __init__(self, tokenizer, prompt_format: str = "plain", template: str = PAPER_TEMPLATE, max_length: int = 2048):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("scoring needs a fast tokenizer (character offsets locate the response tokens)")
        if prompt_format == "plain" and not template.endswith("{response}"):
            raise ValueError("the plain template must end with {response}")
        if prompt_format == "chat" and not tokenizer.chat_template:
            raise ValueError("the tokenizer has no chat template: use prompt_format: plain")
        self.tokenizer, self.prompt_format, self.template, self.max_length = tokenizer, prompt_format, template, max_length

    def encode(self, ex: Example, where: str) -> Encoded:
        """The response scored given the prompt."""
        if self.prompt_format == "plain":
            prefix = self.template[: -len("{response}")].replace("{instruction}", ex.instruction)
            return self._encode_span(prefix + ex.response, len(prefix), True, where)
        assistant = {"role": "assistant", "content": ex.response}
        prompt = self.tokenizer.apply_chat_template(list(ex.prompt), add_generation_prompt=True, tokenize=False)
        full = self.tokenizer.apply_chat_template([*ex.prompt, assistant], tokenize=False)
        if not full.startswith(prompt) or not full[len(prompt):].startswith(ex.response):
            raise DataError(f"{where}: the chat template does not render the response right after the generation "
                            "prompt, so the response tokens cannot be located; use prompt_format: plain")
        return self._encode_span(full[: len(prompt) + len(ex.response)], len(prompt), False, where)

    def encode_response_only(self, ex: Example, where: str) -> Encoded:
        """The response with no instruction (IFD's s(A)). Chat format: the response as the conversation's only turn,
        after whatever the template puts before an assistant turn (its header, a default system turn), so s(A) and
        s(A|Q) differ only by Q and a one-token answer has a token before it.
        Plain (or a template that needs a user turn): the bare response, whose first token is not scored without
        a BOS token."""
        if self.prompt_format == "chat":
            try:  # the answer as the only turn (the template adds what it adds to any conversation, e.g. a system turn)
                full = self.tokenizer.apply_chat_template([{"role": "assistant", "content": ex.response}], tokenize=False)
            except Exception:  # noqa: BLE001 - jinja raises whatever the template's author chose
                full = ""
            if (at := full.rfind(ex.response)) > 0:
                return self._encode_span(full[: at + len(ex.response)], at, False, where)
        return self._encode_span(ex.response, 0, True, where)

    def _encode_span(self, text: str, response_from: int, add_special_tokens: bool, where: str) -> Encoded:
        enc = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        inside = [i for i, (a, b) in enumerate(offsets) if b > response_from and b > a]
        if not inside:
            raise DataError(f"{where}: the response is empty, nothing to score")
        cut = max(0, len(ids) - self.max_length)
        start, end = max(inside[0] - cut, 1), inside[-1] + 1 - cut
        if end <= start:
            raise DataError(f"{where}: no response token can be scored (each needs a token before it, "
                            f"within max_length={self.max_length})")
        return Encoded(ids[cut:], start, end)


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (an out-of-memory shows up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def response_log_probs(model, batch: list[Encoded], pad_id: int) -> list[torch.Tensor]:
    """Per example, log-softmax next-token distributions at the positions that predict response tokens
    ([n_response_tokens, vocab]). Only logits from the earliest response position on are computed."""
    import torch

    longest = max(len(e.ids) for e in batch)
    device = getattr(model, "device", "cpu")  # a transformers model's; where its inputs must be
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros_like(input_ids)
    for b, e in enumerate(batch):
        input_ids[b, : len(e.ids)] = torch.tensor(e.ids, device=device)
        attention_mask[b, : len(e.ids)] = 1
    first = min(e.start for e in batch) - 1
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=longest - first).logits
    return [torch.log_softmax(logits[b, e.start - 1 - first: e.end - 1 - first].float(), dim=-1)
            for b, e in enumerate(batch)]


def _batched(encoded: list[Encoded], batch_size: int, per_batch: Callable[[list[Encoded]], list[float]]) -> list[float]:
    scores = [0.0] * len(encoded)
    for batch in length_sorted_batches([len(e.ids) for e in encoded], batch_size):
        for i, s in zip(batch, per_batch([encoded[i] for i in batch])):
            scores[i] = s
    return scores


def mean_log_probs(model, encoded: list[Encoded], batch_size: int, pad_id: int) -> list[float]:
    """Mean log p of the response tokens (GRAPE's length-normalised score; minus the mean NLL)."""
    import torch

    def per_batch(batch):
        lps = response_log_probs(model, batch, pad_id)
        return [lp.gather(1, torch.tensor(e.ids[e.start: e.end], device=lp.device).unsqueeze(1)).mean().item()
                for e, lp in zip(batch, lps)]
    return _batched(encoded, batch_size, per_batch)


def vllm_log_prob_scorer(model_path: str) -> Callable[[list[Encoded]], list[float]]:
    """mean_log_probs on vLLM: the model is loaded once; each call feeds the Encoded token ids as they are and
    reads vLLM's prompt logprobs (per position the logprob of the actual token given the ones before it;
    position 0 has none). vLLM batches and schedules the prompts itself."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    name, revision = split_revision(model_path)
    llm = LLM(model=name, revision=revision)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)

    def score(encoded: list[Encoded]) -> list[float]:
        outputs = llm.generate([TokensPrompt(prompt_token_ids=e.ids) for e in encoded], params, use_tqdm=False)
        return [sum(out.prompt_logprobs[t][e.ids[t]].logprob for t in range(e.start, e.end)) / (e.end - e.start)
                for e, out in zip(encoded, outputs)]
    return score


def jensen_shannon(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Per-row JSD (natural log, at most ln 2) between distributions given as log-probabilities."""
    import torch

    logm = torch.logsumexp(torch.stack([logp, logq]), dim=0) - math.log(2)

    def kl_to_m(logx):  # terms with zero probability contribute 0 (not 0 * -inf)
        return torch.where(logx.isneginf(), 0.0, logx.exp() * (logx - logm)).sum(-1)
    return 0.5 * (kl_to_m(logp) + kl_to_m(logq))


def mean_jsd(reference, target, encoded: list[Encoded], batch_size: int, pad_id: int) -> list[float]:
    """Mean per-token JSD between two models' next-token distributions over the response tokens
    (normalised per token, so long samples are not favoured)."""
    def per_batch(batch):
        pairs = zip(response_log_probs(reference, batch, pad_id), response_log_probs(target, batch, pad_id))
        return [jensen_shannon(p, q).mean().item() for p, q in pairs]
    return _batched(encoded, batch_size, per_batch)


def prompt_ids(tokenizer, ex: Example, max_length: int, where: str) -> Encoded:
    """The instruction alone (no template, no response) as the tokenizer encodes it, with its special tokens:
    what PASER's released code feeds both models. Longer ones lose tokens from the left. Every position counts
    (start 0, end len(ids))."""
    ids = tokenizer(ex.instruction, add_special_tokens=True)["input_ids"][-max_length:]
    if not ids:
        raise DataError(f"{where}: the instruction is empty, nothing to score")
    return Encoded(ids, 0, len(ids))


def summed_jsd(reference, target, encoded: list[Encoded], batch_size: int, pad_id: int) -> list[float]:
    """PASER's released code's JSD: between the two models' next-token distributions at every position of
    the ids, summed over the positions (not normalised: longer instructions score higher)."""
    import torch

    def logps(model, batch):
        longest = max(len(e.ids) for e in batch)
        device = getattr(model, "device", "cpu")
        ids = torch.full((len(batch), longest), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for b, e in enumerate(batch):
            ids[b, : len(e.ids)] = torch.tensor(e.ids, device=device)
            mask[b, : len(e.ids)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits
        return [torch.log_softmax(logits[b, : len(e.ids)].float(), dim=-1) for b, e in enumerate(batch)]

    def per_batch(batch):
        return [jensen_shannon(p, q).sum().item() for p, q in zip(logps(reference, batch), logps(target, batch))]
    return _batched(encoded, batch_size, per_batch)


# ---------- streaming and resume ----------

class ScoreLog:
    """Scores appended to a jsonl file as they are computed, in row order, so a killed run continues where
    it stopped. A row: {"index", "id", "scores": [one per encoded sequence], "tokens": [their lengths]}.
    It is read back as a stream, never held whole."""

    def __init__(self, path: Path, fresh: bool):
        self.path = Path(path)
        if fresh:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            _cut_partial_line(self.path)

    def rows(self) -> Iterator[dict]:
        """The logged rows, in the order they were written."""
        if not self.path.exists():
            return
        with open(self.path) as f:
            for line in f:
                yield json.loads(line)

    def append(self, rows: list[dict]) -> None:
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def _cut_partial_line(path: Path) -> None:
    """Drop a last line that a kill cut short (it has no newline), so the next append starts a line of its own."""
    with open(path, "rb+") as f:
        complete = sum(len(line) for line in f if line.endswith(b"\n"))
        f.truncate(complete)


class _Replay:
    """Looks up logged rows for increasing row indices, reading the log once, front to back."""

    def __init__(self, rows: Iterator[dict]):
        self.rows = rows
        self.next = next(rows, None)

    def row(self, index: int) -> dict | None:
        while self.next is not None and self.next["index"] < index:
            self.next = next(self.rows, None)
        return self.next if self.next is not None and self.next["index"] == index else None


Item = tuple[int, str, str, list[Example]]  # (row index, row id, where, examples); indices increase


def score_stream(items: Iterable[Item], encode: Callable[[list[Example], str], list[Encoded]],
                 score: Callable[[list[Encoded]], list[float]], log: ScoreLog, chunk_rows: int,
                 progress: Callable[[int], None] = lambda n: None) -> Iterator[dict]:
    """Each item's score row, in item order. Rows are scored chunk by chunk (each chunk length-sorted inside
    `score`) and appended to `log`; rows that `log` already holds (a killed run's) are read back instead.
    Memory holds one chunk."""
    replay, done = _Replay(log.rows()), 0
    for chunk in _chunks(items, chunk_rows):
        rows = {index: replay.row(index) for index, *_ in chunk}
        todo = [item for item in chunk if rows[item[0]] is None]
        if todo:
            scored = _score_chunk(todo, encode, score)
            log.append(scored)
            rows.update((r["index"], r) for r in scored)
        done += len(chunk)
        progress(done)
        yield from (rows[index] for index, *_ in chunk)


def _score_chunk(chunk: list[Item], encode: Callable[[list[Example], str], list[Encoded]],
                 score: Callable[[list[Encoded]], list[float]]) -> list[dict]:
    encoded = [encode(examples, where) for _, _, where, examples in chunk]
    flat = score([e for group in encoded for e in group])
    rows, pos = [], 0
    for (index, row_id, _, _), group in zip(chunk, encoded):
        rows.append({"index": index, "id": row_id, "scores": flat[pos: pos + len(group)],
                     "tokens": [len(e.ids) for e in group]})
        pos += len(group)
    return rows


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------- the select stage's scorers ----------

def pad_id(tokenizer) -> int:
    return next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)


def formatter(cfg, tokenizer) -> Formatter:
    s = cfg.scoring
    return Formatter(tokenizer, s.prompt_format, s.template, s.max_length)


def log_prob_scorer(cfg, ctx) -> tuple[Formatter, Callable[[list[Encoded]], list[float]]]:
    """The formatter and the mean response log-prob scorer of the stage's `model` on scoring.backend; with
    transformers, split across the ranks of a launched stage (ranks.py)."""
    from posttrain import hf

    path = ctx.path(cfg.model)
    if cfg.scoring.backend == "vllm":
        from transformers import AutoTokenizer

        name, revision = split_revision(path)
        return formatter(cfg, AutoTokenizer.from_pretrained(name, revision=revision)), vllm_log_prob_scorer(path)
    model, tokenizer = hf.load_for_inference(path, dtype="float32")
    pad = pad_id(tokenizer)
    score = ranks.shared(lambda encoded: mean_log_probs(model, encoded, cfg.scoring.batch_size, pad))
    return formatter(cfg, tokenizer), score


SCORE_LOG = "scores.jsonl"  # the select stage's progress: what a killed run had scored


def score_log(ctx) -> ScoreLog:
    return ScoreLog(ctx.out_dir / SCORE_LOG, fresh=ctx.resume == "off")


def progress(ctx):
    return lambda done: ctx.info(f"scored {done} rows")
