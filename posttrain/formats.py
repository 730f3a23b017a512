"""Every row format posttrain reads, recognised and normalised in one place (docs/data.md describes them).

SFT rows: `messages`, `prompt`+`completion` (strings or message lists) or alpaca `instruction` (+`input`) +
`output`; a source's `columns` mapping first renames other shapes (GSM8K's question/answer) into these.
Preference rows: `chosen`+`rejected` with an optional `prompt`, as strings, completions or whole
conversations, or HH-RLHF transcripts. Candidate rows (the select stage's GRAPE family): `prompt` (a string)
+ `candidates: [{source, response}]`. RL, generation and eval prompts: a string or a chat (`as_chat`).
A row that fits no format is a DataError naming `where` (file:line).
"""
import json
import re
from dataclasses import dataclass
from typing import Literal

from posttrain.data import DataError

SFTFormat = Literal["auto", "messages", "prompt_completion", "alpaca"]
# The names a `columns` mapping may rename a column to: the fields of the SFT formats.
SFTColumn = Literal["messages", "prompt", "completion", "instruction", "input", "output"]
PreferenceColumn = Literal["prompt", "chosen", "rejected"]
HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _keys(row: dict) -> str:
    return ", ".join(sorted(row)[:8]) or "none"


def prompt_problem(prompt) -> str | None:
    """Why a prompt (RL, generation) is unusable: it must be a non-empty string or a list of {role, content}."""
    if isinstance(prompt, str) and prompt.strip():
        return None
    if isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt):
        return None
    return f"a prompt is a non-empty string or a list of {{role, content}} messages; got {json.dumps(prompt, default=str)[:120]}"


def as_chat(prompt: str | list[dict]) -> list[dict]:
    """A prompt (RL, generation and eval rows, a preference row's `prompt`) as a chat: a plain string
    becomes one user turn."""
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]


def rename_columns(row: dict, columns: dict[str, str] | None, where: str) -> dict:
    """The row with each `columns` key renamed to its value (e.g. {question: prompt}); a named column the row
    lacks, or a target it already has, is an error naming the row."""
    if not columns:
        return row
    missing = [c for c in columns if c not in row]
    if missing:
        raise DataError(f"{where}: column {', '.join(map(repr, missing))} named in `columns` is not in the row; "
                        f"it has: {_keys(row)}")
    clash = next((t for t in columns.values() if t in row and t not in columns), None)
    if clash:
        raise DataError(f"{where}: `columns` renames a column to '{clash}', which the row already has; "
                        f"map '{clash}' too or drop it from `columns`")
    return {**{k: v for k, v in row.items() if k not in columns}, **{t: row[s] for s, t in columns.items()}}


def columns_problem(columns: dict[str, str] | None) -> str | None:
    """What is wrong with a `columns` mapping itself (its values' names are checked by the schema)."""
    targets = list((columns or {}).values())
    dup = next((t for t in targets if targets.count(t) > 1), None)
    return f"two columns are renamed to '{dup}'" if dup else None


def to_messages(row: dict, fmt: str, where: str) -> list[dict]:
    """An SFT row as a chat; a DataError naming `where` if it fits no format."""
    if fmt in ("auto", "messages") and isinstance(row.get("messages"), list):
        msgs = row["messages"]
        if all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs) \
                and any(m["role"] == "assistant" for m in msgs):
            return [{"role": m["role"], "content": m["content"]} for m in msgs]
        raise DataError(f"{where}: `messages` must be a list of {{role, content}} with at least one assistant turn")
    if fmt in ("auto", "prompt_completion") and "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        if isinstance(prompt, list) and isinstance(completion, list):
            return to_messages({"messages": prompt + completion}, "messages", where)
    if fmt in ("auto", "alpaca") and isinstance(row.get("instruction"), str) and isinstance(row.get("output"), str):
        user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    raise DataError(f"{where}: row fits no SFT format{'' if fmt == 'auto' else f' (format: {fmt})'}; expected `messages`, "
                    f"`prompt`+`completion` or alpaca `instruction`+`output` (or rename columns with `columns`); "
                    f"it has: {_keys(row)}")


# ---------- preference rows ----------

def _hh_messages(transcript: str) -> list[dict]:
    parts = HH_TURN.split("\n\n" + transcript.lstrip("\n"))  # ["", role, text, role, text, ...]
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)]


def _split_last_assistant(msgs: list[dict], where: str) -> tuple[list[dict], list[dict]]:
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None or last == 0:
        raise DataError(f"{where}: no assistant turn after a prompt to compare")
    return msgs[:last], msgs[last:]


def _split_pair(chosen: list[dict], rejected: list[dict], where: str) -> tuple[list[dict], list[dict], list[dict]]:
    """Whole conversations -> (the shared conversation before the last assistant turn, chosen, rejected)."""
    before, chosen = _split_last_assistant(chosen, where)
    before_r, rejected = _split_last_assistant(rejected, where)
    if before_r != before:
        raise DataError(f"{where}: chosen and rejected have different conversations before the last assistant turn")
    return before, chosen, rejected


def _check_turns(value, where: str, column: str) -> None:
    """A prompt, chosen or rejected value is a string or a list of {role, content} messages (strings)."""
    if isinstance(value, str) or (isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)):
        return
    raise DataError(f"{where}: `{column}` must be a string or a non-empty list of {{role, content}} messages with "
                    f"string values; got {json.dumps(value, default=str)[:120]}")


def to_preference(row: dict, where: str) -> dict:
    """A preference row in TRL's conversational prompt/chosen/rejected form: chosen and rejected are the answers
    only (assistant turns after the shared prompt), and differ."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if chosen is None or rejected is None:
        raise DataError(f"{where}: a preference row needs `chosen` and `rejected`; it has: {_keys(row)}")
    for column in ("prompt", "chosen", "rejected"):
        if row.get(column) is not None:
            _check_turns(row[column], where, column)
    if isinstance(chosen, str) and isinstance(rejected, str) and "prompt" not in row and HH_TURN.search("\n\n" + chosen.lstrip("\n")):
        chosen, rejected = _hh_messages(chosen), _hh_messages(rejected)
    prompt = row.get("prompt")
    if prompt is None:  # full conversations: the prompt is everything before the last assistant turn
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise DataError(f"{where}: without `prompt`, chosen/rejected must be conversations")
        prompt, chosen, rejected = _split_pair(chosen, rejected, where)
    elif isinstance(chosen, list) and isinstance(rejected, list) and any(m.get("role") != "assistant" for m in chosen):
        # Tülu 3's preference mixture: a `prompt` string and chosen/rejected as whole conversations. Kept whole,
        # each pair reads user -> user -> assistant and the user turn is trained as completion: the shared
        # conversation, which must end with the prompt's turns, becomes the prompt.
        before, chosen, rejected = _split_pair(chosen, rejected, where)
        if before[-len(as_chat(prompt)):] != as_chat(prompt):
            raise DataError(f"{where}: `prompt` is not the end of the conversation that chosen/rejected start with; "
                            "give chosen/rejected as completions only, or drop `prompt`")
        prompt = before
    as_turn = lambda x: [{"role": "assistant", "content": x}] if isinstance(x, str) else x  # noqa: E731
    pair = {"prompt": as_chat(prompt), "chosen": as_turn(chosen), "rejected": as_turn(rejected)}
    for side in ("chosen", "rejected"):
        other = next((m["role"] for m in pair[side] if m["role"] != "assistant"), None)
        if other is not None:  # it would be trained as part of the answer
            raise DataError(f"{where}: `{side}` holds a '{other}' turn after the prompt; give chosen and rejected in the "
                            "same shape: both answers only, or both whole conversations that share the prompt")
    if pair["chosen"] == pair["rejected"]:
        raise DataError(f"{where}: chosen and rejected are the same answer; the pair teaches nothing")
    return pair


# ---------- the select stage's view: (prompt, response) examples and candidate rows ----------

@dataclass(frozen=True)
class Example:
    prompt: tuple[dict, ...]  # chat messages before the response
    response: str

    @property
    def instruction(self) -> str:
        """The prompt as plain text: message contents joined by blank lines (roles are dropped)."""
        return "\n\n".join(m["content"] for m in self.prompt)


def to_example(row: dict, where: str) -> Example:
    """An SFT row in any format as (everything before the last assistant turn, that turn)."""
    messages = to_messages(row, "auto", where)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return Example(tuple(messages[:last]), messages[last]["content"])


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


# ---------- bounding a huge row ----------

def clip_messages(messages: list[dict], max_chars: int | None) -> list[dict]:
    """Each message's content cut to `max_chars` characters (None: whole): see `content_budget`."""
    if max_chars is None:
        return messages
    return [{**m, "content": m["content"][:max_chars]} if len(m["content"]) > max_chars else m for m in messages]


def content_budget(tokenizer, max_length: int) -> int:
    """How many characters of one message can matter when training keeps the first `max_length` tokens: no
    token covers more characters than the longest vocabulary entry, so a longer content already holds more
    than max_length tokens. Cutting there before tokenising makes a huge row cost what max_length costs,
    not what the row costs, and keeps the tokens training sees; a margin of 64 tokens keeps the cut away
    from the last kept token."""
    longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
    return (max_length + 64) * max(longest, 1)
