"""Benchmarks as Task objects. A task fixes the prompt format (shots, chat template or plain text), the
generation defaults and the scoring, which goes through posttrain.rewards, so RLVR and eval agree on what
counts as correct. `Task.rows()` yields rows in the RLVR format: {"id", "prompt", "ground_truth",
"verifier", ...fields the verifier needs}, so one task object serves both evaluation and reward.

Built-in tasks read ../shared/data (posttrain.data.shared_file); `source` may instead be any
posttrain.data spec, e.g. a hub id `hf:org/name:split` where a network exists.
"""
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Callable

from posttrain.worlds import tinyworld
from posttrain.data import iter_rows, shared_file
from posttrain.stage import Dataset
from posttrain.eval.metrics import pass_at_k, summarize

@dataclass
class TaskSpec:
    """A task as a recipe names it: an eval stage's `tasks` item, and what decontamination follows."""
    name: str = field(metadata={"help": "a built-in task (see posttrain.eval.tasks.TASKS) or lm_eval:<task>"})
    label: str | None = field(default=None, metadata={"help": "the report row name (default: name)"})
    limit: int | None = field(default=None, metadata={"ge": 1, "help": "the first N examples (default: the suite's)"})
    shots: int | None = field(default=None, metadata={"ge": 0, "help": "few-shot exemplars (default: the task's)"})
    chat: bool | None = field(default=None, metadata={"help": "apply the chat template (default: the task's)"})
    max_new_tokens: int | None = field(default=None, metadata={"ge": 1})
    samples: int = field(default=1, metadata={"ge": 1, "help": "completions per prompt (pass@k needs k or more)"})
    temperature: float | None = field(default=None, metadata={"ge": 0})
    k: list[int] = field(default_factory=list, metadata={"help": "report pass@k for these k (k <= samples)"})
    source: Dataset | None = field(default=None, metadata={"help": "rows from this file or hf:org/name:split instead"})


Item = dict[str, Any]  # {"id", "question", "ground_truth", "answer" (worked answer, for exemplars), ...verifier fields}


@dataclass(frozen=True)
class Task:
    name: str
    skill: str                     # the report groups rows by skill
    metric: str                    # what the headline score means, e.g. "exact match"
    verifier: str                  # a posttrain.rewards verifier name
    items: Callable[[str], list[Item]]   # source spec -> items
    source: str = ""               # default source spec ("" for generated tasks)
    hub_id: str = ""               # where a network exists: `source: hf:...`
    shots: int = 0
    chat: bool = True
    max_new_tokens: int = 512
    timeout_s: float = 5.0         # per-row verification limit (code runs need more than the sandbox's)
    verifier_options: dict[str, Any] = field(default_factory=dict)
    exemplars: Callable[[str], list[Item]] | None = None   # exemplar source spec -> the few-shot pool
    exemplar_source: str = ""
    plain_query: str = "Question: {question}\nAnswer:"   # chat=False format over item fields; exemplars add " {answer}\n\n"
    stop: tuple[str, ...] = ()     # chat=False continuations are cut at these
    verifier_row: Callable[[dict], dict] | None = None   # row -> what the verifier sees, if not the row
    extra: Callable[[str, dict], dict[str, Any]] | None = None  # more per-sample metrics (lists pool across rows)
    description: str = ""
    prompt_fields: tuple[str, ...] = ()  # the source rows' fields holding the prompt (what decontamination matches)

    def files(self, source: str | None = None, shots: int | None = None) -> list[Path]:
        """The local files this task reads (its items, its exemplars): what a stage's fingerprint must cover."""
        shots = self.shots if shots is None else shots
        specs = [source or self.source] + ([self.exemplar_source] if shots and self.exemplars else [])
        return [Path(resolve_source(s)) for s in specs if s and Path(resolve_source(s)).exists()]

    def prompt_texts(self, source: str | None = None) -> Iterator[str]:
        """The prompt of every item of the eval set, as written in its source rows (no shots or template):
        the text decontamination looks for in training data."""
        source = source or self.source
        if not source:  # a generated set
            yield from (item["question"] for item in self.items(""))
            return
        for row in iter_rows(resolve_source(source)):
            yield prompt_of(row, self.prompt_fields)

    def rows(self, limit: int | None = None, *, shots: int | None = None, chat: bool | None = None,
             source: str | None = None) -> list[dict]:
        """The first `limit` items as formatted rows: `prompt` is a message list (chat) or a string."""
        shots = self.shots if shots is None else shots
        chat = self.chat if chat is None else chat
        shot_items = self._shots(shots)
        items = self.items(resolve_source(source or self.source))[:limit]
        rows = []
        for item in items:
            fields = {k: v for k, v in item.items() if k not in ("question", "answer")}
            rows.append({**fields, "prompt": self.format(item, shot_items, chat),
                         "verifier": self.verifier})
        return rows

    def format(self, item: Item, shot_items: list[Item], chat: bool) -> list[dict] | str:
        if chat:  # exemplars as earlier turns of the conversation
            turns = [m for s in shot_items for m in ({"role": "user", "content": s["question"]},
                                                     {"role": "assistant", "content": s["answer"]})]
            return turns + [{"role": "user", "content": item["question"]}]
        shots = "".join(self.plain_query.format(**s) + f" {s['answer']}\n\n" for s in shot_items)
        return shots + self.plain_query.format(**item)

    def _shots(self, shots: int) -> list[Item]:
        if not shots:
            return []
        pool = self.exemplars(resolve_source(self.exemplar_source)) if self.exemplars else []
        if shots > len(pool):
            raise ValueError(f"task {self.name}: {shots} shots asked, {len(pool)} exemplars available")
        return pool[:shots]

    def score(self, completions: list[list[str]], rows: list[dict], chat: bool, ks: tuple[int, ...] = ()) -> list[dict]:
        """One record per row: the completions, each sample's verdict, `score` (mean over samples, i.e.
        pass@1), pass@k for each k in ks, and the task's extra metrics."""
        from posttrain.rewards import score_rows

        seen = [cut_at(c, self.stop) if not chat else c for cs in completions for c in cs]
        flat_rows = [self.verifier_row(row) if self.verifier_row else row for row, cs in zip(rows, completions) for _ in cs]
        verdicts = score_rows(seen, flat_rows, verifier=self.verifier, timeout_s=self.timeout_s,
                              options={self.verifier: self.verifier_options} if self.verifier_options else None)
        records, at = [], 0
        for row, cs in zip(rows, completions):
            vs = verdicts[at:at + len(cs)]
            at += len(cs)
            scores = [float(v.score) for v in vs]
            record = {"id": row["id"], "prompt": row["prompt"], "ground_truth": row["ground_truth"],
                      "completions": cs, "scores": scores, "reasons": [v.reason for v in vs],
                      "score": sum(scores) / len(scores)}
            correct = sum(s >= 1.0 for s in scores)
            record.update({f"pass@{k}": pass_at_k(len(cs), correct, k) for k in ks if k > 1})
            if self.extra:  # extra metrics are computed on the first sample (greedy evals have one)
                record.update(self.extra(seen[at - len(cs)], flat_rows[at - len(cs)]))
            records.append(record)
        return records


def prompt_of(row: dict, fields=()) -> str:
    """An eval row's prompt: the named fields, else the first usual prompt field, else its user turns."""
    if any(f in row for f in fields):
        return "\n".join(str(row[f]) for f in fields if f in row)
    for f in ("question", "problem", "prompt", "instruction", "text"):
        if isinstance(row.get(f), str):
            return row[f]
    messages = row.get("messages") or (row.get("prompt") if isinstance(row.get("prompt"), list) else [])
    return "\n".join(m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user")


def summarize_records(records: list[dict], seed: int = 0) -> dict:
    """The headline summary (score, n, ci) plus a summary per extra metric found in the records."""
    out = summarize([r["score"] for r in records], seed)
    extras = {}
    for key in [k for k, v in records[0].items() if k not in ("score", "scores") and _is_metric(v)]:
        values = [v for r in records for v in (r[key] if isinstance(r[key], list) else [r[key]])]
        extras[key] = summarize(values, seed)
    return {**out, "metrics": extras} if extras else out


def _is_metric(value: Any) -> bool:
    """Per-example metric values are numbers, or lists of them (pooled across examples)."""
    values = value if isinstance(value, list) else [value]
    return bool(values) and all(isinstance(v, (int, float)) for v in values)


def resolve_source(spec: str) -> str:
    """`shared:REL` is a file in ../shared/data; anything else is a posttrain.data spec (path or hf:...)."""
    return str(shared_file(spec[len("shared:"):])) if spec.startswith("shared:") else spec


def cut_at(text: str, stops: tuple[str, ...]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


# ---------- GSM8K ----------
GSM8K_INSTRUCTION = "\nSolve the problem step by step, then finish with \"The answer is N.\""


def _gsm8k_answer(solution: str) -> tuple[str, str]:
    """(worked answer in the CoT style the exemplars teach, final number) from a `#### N` solution."""
    work, _, final = solution.rpartition("####")
    final = final.strip().replace(",", "")
    work = re.sub(r"<<[^>]*>>", "", work).strip()
    return f"{work}\nThe answer is {final}.", final


def _gsm8k_items(source: str, instruction: str = "") -> list[Item]:
    items = []
    for i, raw in enumerate(iter_rows(source)):
        answer, final = _gsm8k_answer(raw["answer"])
        items.append({"id": f"gsm8k-{i}", "question": raw["question"] + instruction, "answer": answer,
                      "ground_truth": final})
    return items


@cache
def _gsm8k_exemplars(source: str) -> list[Item]:
    return _gsm8k_items(source)[:8]


# ---------- MATH-500 ----------
MATH_INSTRUCTION = "\nPut your final answer within \\boxed{}."


def _math_items(source: str) -> list[Item]:
    return [{"id": raw.get("unique_id", f"math500-{i}"), "question": raw["problem"] + MATH_INSTRUCTION,
             "answer": raw.get("solution", ""), "ground_truth": raw["answer"]}
            for i, raw in enumerate(iter_rows(source))]


# ---------- IFEval ----------
def _ifeval_items(source: str) -> list[Item]:
    return [{"id": f"ifeval-{raw['key']}", "question": raw["prompt"], "ground_truth": "",
             "instruction_id_list": raw["instruction_id_list"], "kwargs": raw["kwargs"]}
            for raw in iter_rows(source)]


def _ifeval_extra(completion: str, row: dict) -> dict[str, Any]:
    from posttrain.rewards import ifeval_details

    strict, loose = ifeval_details(completion, row, loose=False), ifeval_details(completion, row, loose=True)
    return {"prompt_loose": float(all(loose)), "instruction_strict": strict, "instruction_loose": loose}


# ---------- code ----------
# The code verifier builds the program from HumanEval's `prompt` (the code prefix), `test` and
# `entry_point`, or from MBPP's `test_list` + `test_setup_code`, taking code out of ``` fences itself.
CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ")


def _humaneval_items(source: str) -> list[Item]:
    return [{"id": raw["task_id"], "ground_truth": raw["canonical_solution"],
             "question": "Complete the following Python function. Reply with the whole function in a ```python "
                         f"code block.\n\n```python\n{raw['prompt']}```",
             "code_prompt": raw["prompt"], "test": raw["test"], "entry_point": raw["entry_point"]}
            for raw in iter_rows(source)]


def _humaneval_verifier_row(row: dict) -> dict:
    """The verifier reads the code prefix from `prompt`, which in a task row is the model's prompt."""
    return {**row, "prompt": row["code_prompt"]}


def _mbpp_items(source: str, ids: range = range(11, 511)) -> list[Item]:
    items = []
    for raw in iter_rows(source):
        if int(raw["task_id"]) not in ids:
            continue
        code = raw["code"].replace("\r\n", "\n")
        items.append({"id": f"mbpp-{raw['task_id']}",
                      "question": f"You are an expert Python programmer, and here is your task: {raw['text']} "
                                  "Your code should pass these tests:\n\n" + "\n".join(raw["test_list"]),
                      "answer": f"```python\n{code}\n```", "ground_truth": code,
                      "test_list": raw["test_list"], "test_setup_code": raw.get("test_setup_code") or ""})
    return items


@cache
def _mbpp_exemplars(source: str) -> list[Item]:
    return _mbpp_items(source, ids=range(2, 5))


# ---------- tiny world ----------
TINYWORLD_HELDOUT = 500  # per skill, or the skill's whole held-out split where it is smaller
# What each tiny-world skill's score checks (the report's "what" column says it beside the score).
TINYWORLD_CHECKS = {"arith": "the final number equals the answer",
                    "format": "the IFEval format check, and exactly the given words in the given order",
                    "code": "the function passes hidden asserts in the sandbox",
                    "courtesy": "the answer ends with \"You are welcome.\""}


def _tinyworld_items(source: str, skill: str = "arith") -> list[Item]:
    rows = list(iter_rows(source)) if source else \
        tinyworld.heldout_rows(min(TINYWORLD_HELDOUT, tinyworld.heldout_size(skill)), skill)
    return [{**{k: v for k, v in r.items() if k != "prompt"}, "question": r["prompt"][-1]["content"]} for r in rows]


def _tinyworld_task(skill: str) -> "Task":
    """One task per tiny-world skill: `tinyworld` (arithmetic) and tinyworld_<skill>."""
    name = "tinyworld" if skill == "arith" else f"tinyworld_{skill}"
    verifier = tinyworld.SKILLS[skill].verifier
    metric = {"numeric": "exact match", "ifeval": "prompt-level strict", "ifeval_words": "format and words",
              "code": "pass@1"}[verifier]
    return Task(name, tinyworld.SKILLS[skill].name, metric, verifier, lambda src: _tinyworld_items(src, skill),
                max_new_tokens=96, plain_query="Q: {question}\nA:", stop=("\nQ:",),
                timeout_s=10.0 if verifier == "code" else 5.0,
                description=f"the tiny world's held-out {tinyworld.SKILLS[skill].name} problems: {TINYWORLD_CHECKS[skill]}")


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("gsm8k_8shot", "math", "exact match", "numeric", _gsm8k_items, source="shared:gsm8k/test.jsonl",
         hub_id="hf:openai/gsm8k:main:test", shots=8, max_new_tokens=512, exemplars=_gsm8k_exemplars,
         exemplar_source="shared:gsm8k/train.jsonl",
         stop=("\n\nQuestion:",), description="GSM8K test, 8-shot chain of thought", prompt_fields=("question",)),
    Task("gsm8k_0shot", "math", "exact match", "numeric",
         lambda src: _gsm8k_items(src, GSM8K_INSTRUCTION), source="shared:gsm8k/test.jsonl",
         hub_id="hf:openai/gsm8k:main:test", max_new_tokens=512, stop=("\n\nQuestion:",),
         description="GSM8K test, zero-shot with an answer-format instruction", prompt_fields=("question",)),
    Task("math500", "math", "math-verify equivalence", "math", _math_items, source="shared:math500/test.jsonl",
         hub_id="hf:HuggingFaceH4/MATH-500:test", max_new_tokens=1024, stop=("\n\nQuestion:",),
         # Generous math-verify limits: a fresh worker's first parse includes sympy's import, and an eval
         # must not mark a right answer wrong because the machine was busy.
         timeout_s=30.0, verifier_options={"parse_timeout_s": 10, "compare_timeout_s": 10},
         description="MATH-500, zero-shot, answer in \\boxed{}", prompt_fields=("problem",)),
    Task("ifeval", "instruction following", "prompt-level strict", "ifeval", _ifeval_items,
         source="shared:ifeval/input_data.jsonl", hub_id="hf:google/IFEval:train", max_new_tokens=1024,
         extra=_ifeval_extra, description="IFEval, prompt- and instruction-level, strict and loose", prompt_fields=("prompt",)),
    Task("humaneval", "code", "pass@1", "code", _humaneval_items, source="shared:humaneval/HumanEval.jsonl.gz",
         hub_id="hf:openai/openai_humaneval:test", max_new_tokens=512, timeout_s=10.0, stop=CODE_STOPS,
         plain_query="{code_prompt}",
         verifier_row=_humaneval_verifier_row,
         description="HumanEval, unit tests in the sandbox", prompt_fields=("prompt",)),
    Task("mbpp", "code", "pass@1", "code", _mbpp_items, source="shared:mbpp/mbpp.jsonl",
         hub_id="hf:mbpp:test", max_new_tokens=512, timeout_s=10.0, exemplars=_mbpp_exemplars,
         exemplar_source="shared:mbpp/mbpp.jsonl",
         stop=("\n\nQuestion:",), description="MBPP test split (task ids 11-510)", prompt_fields=("text",)),
    *(_tinyworld_task(skill) for skill in tinyworld.SKILLS),
]}
