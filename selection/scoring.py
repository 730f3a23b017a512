"""Forward-pass scoring of responses under causal LMs, batched, length-sorted and resumable.

Token boundary: the prompt and the response are rendered into one text and tokenized once, with character
offsets. A token belongs to the response when it covers any response character, so a token that merges
the prompt's trailing space with the response's first word (" The" in BPE vocabularies) counts as a
response token; tokenizing the prompt alone would give a different, wrong boundary there. Only the
response tokens are scored; each is predicted from everything before it.

Too-long texts are cut from the left (the prompt start goes first) to `max_length` tokens.
"""
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.data import DataError
from posttrain.selection.formats import Example

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
        """The response with no prompt (IFD's s(A)); without a BOS token the first token is not scored."""
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


@torch.inference_mode()
def response_log_probs(model, batch: list[Encoded], pad_id: int) -> list[torch.Tensor]:
    """Per example, log-softmax next-token distributions at the positions that predict response tokens
    ([n_response_tokens, vocab]). Only logits from the earliest response position on are computed."""
    longest = max(len(e.ids) for e in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for b, e in enumerate(batch):
        input_ids[b, : len(e.ids)] = torch.tensor(e.ids)
        attention_mask[b, : len(e.ids)] = 1
    first = min(e.start for e in batch) - 1
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
    def per_batch(batch):
        lps = response_log_probs(model, batch, pad_id)
        return [lp.gather(1, torch.tensor(e.ids[e.start: e.end]).unsqueeze(1)).mean().item() for e, lp in zip(batch, lps)]
    return _batched(encoded, batch_size, per_batch)


def jensen_shannon(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Per-row JSD (natural log, at most ln 2) between distributions given as log-probabilities."""
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


# ---------- streaming and resume ----------

class ScoreLog:
    """Scores appended to a jsonl file as they are computed, so a killed run continues where it stopped.
    A row: {"index", "id", "scores": [one per encoded sequence], "tokens": [their lengths]}."""

    def __init__(self, path: Path, fresh: bool):
        self.path = Path(path)
        self.done: dict[int, dict] = {}
        if fresh:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # the last line of a killed run may be cut short
                    continue
                self.done[row["index"]] = row

    def append(self, rows: list[dict]) -> None:
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        self.done.update((r["index"], r) for r in rows)


Item = tuple[int, str, str, list[Example]]  # (row index, row id, where, examples)


def score_stream(items: Iterable[Item], encode: Callable[[list[Example], str], list[Encoded]],
                 score: Callable[[list[Encoded]], list[float]], log: ScoreLog, chunk_rows: int,
                 progress: Callable[[int], None] = lambda n: None) -> dict[int, dict]:
    """Score rows chunk by chunk (each chunk length-sorted inside `score`), skipping rows already in `log`."""
    for chunk in _chunks((it for it in items if it[0] not in log.done), chunk_rows):
        encoded = [encode(examples, where) for _, _, where, examples in chunk]
        flat = score([e for group in encoded for e in group])
        rows, pos = [], 0
        for (index, row_id, _, _), group in zip(chunk, encoded):
            rows.append({"index": index, "id": row_id, "scores": flat[pos: pos + len(group)],
                         "tokens": [len(e.ids) for e in group]})
            pos += len(group)
        log.append(rows)
        progress(len(log.done))
    return log.done


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
