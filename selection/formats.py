"""Row formats the select stage reads, reduced to one shape: a prompt (chat messages) and a response.

SFT rows come as `messages` (the last assistant turn is the response, everything before it the prompt),
alpaca (`instruction`, optional `input`, `output`) or `prompt`/`completion` (strings or message lists).
Candidate rows (GRAPE family) are `{"id", "prompt": str, "candidates": [{"source", "response"}, ...]}`.
"""
from dataclasses import dataclass

from posttrain.data import DataError


@dataclass(frozen=True)
class Example:
    prompt: tuple[dict, ...]  # chat messages before the response
    response: str

    @property
    def instruction(self) -> str:
        """The prompt as plain text: message contents joined by blank lines (roles are dropped)."""
        return "\n\n".join(m["content"] for m in self.prompt)


def _messages(value, where: str, key: str) -> tuple[dict, ...]:
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    if isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m
                                       for m in value):
        return tuple({"role": m["role"], "content": m["content"]} for m in value)
    raise DataError(f"{where}: '{key}' must be a string or a list of {{role, content}} messages")


def to_example(row: dict, where: str) -> Example:
    """An SFT row in any supported format as (prompt, response)."""
    if "messages" in row:
        messages = _messages(row["messages"], where, "messages")
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise DataError(f"{where}: 'messages' has no assistant turn to score")
        return Example(messages[:last], messages[last]["content"])
    if "instruction" in row and "output" in row:
        text = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        return Example(({"role": "user", "content": text},), str(row["output"]))
    if "prompt" in row and "completion" in row:
        completion = _messages(row["completion"], where, "completion")
        return Example(_messages(row["prompt"], where, "prompt"), "".join(m["content"] for m in completion))
    raise DataError(f"{where}: unknown row format (keys: {', '.join(sorted(row)) or 'none'}); expected 'messages', "
                    "'instruction'+'output' (alpaca) or 'prompt'+'completion'")


def candidates(row: dict, where: str) -> list[dict]:
    """The candidate responses of a GRAPE-family row, validated."""
    if not isinstance(row.get("prompt"), str) or not isinstance(row.get("candidates"), list) or not row["candidates"]:
        raise DataError(f"{where}: a candidate row needs 'prompt' (a string) and a non-empty 'candidates' list")
    for j, c in enumerate(row["candidates"]):
        if not isinstance(c, dict) or not isinstance(c.get("response"), str) or not isinstance(c.get("source"), str):
            raise DataError(f"{where}: candidates[{j}] must be {{\"source\": str, \"response\": str}}")
    return row["candidates"]


def candidate_examples(row: dict, where: str) -> list[Example]:
    prompt = ({"role": "user", "content": row["prompt"]},)
    return [Example(prompt, c["response"]) for c in candidates(row, where)]


def sft_row(row: dict, candidate: dict, row_id: str) -> dict:
    """A chosen candidate as an SFT row; the row's other columns (e.g. ground_truth) are kept."""
    rest = {k: v for k, v in row.items() if k not in ("id", "prompt", "candidates")}
    return {"id": row_id, "messages": [{"role": "user", "content": row["prompt"]},
                                       {"role": "assistant", "content": candidate["response"]}],
            "source": candidate["source"], **rest}


def row_text(row: dict, where: str) -> str:
    """All of a row's prompt and response text, for near-duplicate and contamination checks."""
    if "candidates" in row:
        return "\n".join([row["prompt"], *(c["response"] for c in candidates(row, where))])
    ex = to_example(row, where)
    return f"{ex.instruction}\n{ex.response}"


def locate(where: str, row: dict) -> str:
    """How errors name a row: its file and line (from posttrain.data.located_rows) and its id."""
    return where + (f" (id {row['id']})" if "id" in row else "")
