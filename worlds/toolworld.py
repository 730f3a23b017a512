"""The tool world: three-number word problems (a + b - c, a - b + c, two-digit numbers) that the tiny model
rarely gets right in its head but solves by handing the expression to a Python tool.

The tokenizer is the tiny world's (character-level) with a chat template that can express tool calls and
a response template that parses them back (TRL's GRPOTrainer needs both for `tools`):

    <|system|>\\nTools: python\\n<|user|>\\n...question...\\n<|assistant|>\\n<python>{"code": "37+45-12"}</python><|endoftext|>
    \\n<|user|>\\n<result>70</result>\\n<|assistant|>\\nThe answer is 70.<|endoftext|>

The tools line appears only when tools are offered. Teacher traces (`trace_rows`) mix the two ways to answer:
where the tool is offered, a share of them call it; the rest work in their head, and are often wrong.
"""
from __future__ import annotations

import hashlib
import random

from posttrain.worlds.arith import ITEMS, NAMES
from posttrain.worlds.tinyworld import build_tokenizer

TOOL_CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|system|>\\nTools: ' }}{% for tool in tools %}{{ tool['function']['name'] }}"
    "{% if not loop.last %}{{ ', ' }}{% endif %}{% endfor %}{{ '\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'tool' %}{{ '<|user|>\\n<result>' + message['content'] + '</result>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' }}"
    "{% generation %}{{ message['content'] }}"
    "{% for call in message.get('tool_calls') or [] %}{% set args = call['function']['arguments'] %}"
    "{{ '<' + call['function']['name'] + '>' + (args if args is string else args | tojson) + '</' + call['function']['name'] + '>' }}"
    "{% endfor %}{{ eos_token }}{% endgeneration %}"
    "{% if not loop.last %}{{ '\\n' }}{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# transformers' response parser: `<name>{json arguments}</name>` is a tool call, the rest is the content.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"}, "start_anchor": "<|assistant|>\n",
    "fields": {
        "tool_calls": {"open_pattern": r"<(?P<name>\w+)>(?=\{)", "close_pattern": r"</\w+>", "repeats": True,
                       "content": "json",
                       "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}}},
        "content": {"close_pattern": r"<\|endoftext\|>\s*", "content": "text"},
    },
}
TOOLS_SCHEMA = [{"type": "function", "function": {"name": "python", "description": "Run Python code",
                                                  "parameters": {"type": "object", "properties": {"code": {"type": "string"}},
                                                                 "required": ["code"]}}}]
TEMPLATES = {"+-": "{n} has {a} {i}, gets {b} more and gives away {c}. How many now?",
             "-+": "{n} had {a} {i}, lost {b} and then found {c}. How many now?"}


def build_tool_tokenizer():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = TOOL_CHAT_TEMPLATE
    tokenizer.response_template = RESPONSE_TEMPLATE
    return tokenizer


def _expression(a: int, ops: str, b: int, c: int) -> str:
    return f"{a}{ops[0]}{b}{ops[1]}{c}"


def _value(problem: tuple) -> int:
    a, ops, b, c = problem
    return a + b - c if ops == "+-" else a - b + c


def _is_heldout(problem: tuple) -> bool:
    return hashlib.sha256(_expression(*problem).encode()).digest()[0] % 10 == 0


def _problem(rng: random.Random) -> tuple[int, str, int, int]:
    ops = rng.choice(sorted(TEMPLATES))
    a, b, c = (rng.randint(10, 99) for _ in range(3))
    if ops == "-+" and b > a:
        a, b = b, a
    if ops == "+-" and c > a + b:
        c = rng.randint(10, a + b)
    return a, ops, b, c


def _draw(n: int, seed: int, heldout: bool) -> list[tuple[tuple, random.Random]]:
    rng, out = random.Random(seed), []
    while len(out) < n:
        problem = _problem(rng)
        if _is_heldout(problem) == heldout:
            out.append((problem, random.Random(rng.getrandbits(64))))
    return out


def _question(problem: tuple, rng: random.Random) -> str:
    a, ops, b, c = problem
    return TEMPLATES[ops].format(n=rng.choice(NAMES), i=rng.choice(ITEMS), a=a, b=b, c=c)


def _row(row_id: str, problem: tuple, rng: random.Random) -> dict:
    return {"id": row_id, "prompt": [{"role": "user", "content": _question(problem, rng)}],
            "ground_truth": str(_value(problem)), "verifier": "numeric"}


def rl_rows(n: int, seed: int) -> list[dict]:
    return [_row(f"toolw-rl-{seed}-{i}", p, rng) for i, (p, rng) in enumerate(_draw(n, seed, heldout=False))]


def heldout_rows(n: int) -> list[dict]:
    return [_row(f"toolw-heldout-{i}", p, rng) for i, (p, rng) in enumerate(_draw(n, 4321, heldout=True))]


def trace_messages(problem: tuple, rng: random.Random, use_tool: bool) -> list[dict]:
    """A teacher's answer: a tool call, its result and the answer; or a head calculation that is off by
    1 or 10 half of the time (the student cannot do better in its head than its teachers)."""
    answer = _value(problem)
    if use_tool:
        call = {"type": "function", "function": {"name": "python", "arguments": {"code": _expression(*problem)}}}
        return [{"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "name": "python", "content": str(answer)},
                {"role": "assistant", "content": f"The answer is {answer}."}]
    guess = answer + (rng.choice([-10, -1, 1, 10]) if rng.random() < 0.5 else 0)
    return [{"role": "assistant", "content": f"{_expression(*problem)}={guess}. The answer is {guess}."}]


def trace_rows(n: int, seed: int, tool_share: float, offered_share: float = 0.5) -> list[dict]:
    """Raw text for training the start model: whole conversations rendered by the tool template. The tool is
    offered in `offered_share` of them; where it is, `tool_share` of the teachers call it."""
    tokenizer, rows = build_tool_tokenizer(), []
    for problem, rng in _draw(n, seed, heldout=False):
        offered = rng.random() < offered_share
        messages = [{"role": "user", "content": _question(problem, rng)},
                    *trace_messages(problem, rng, offered and rng.random() < tool_share)]
        text = tokenizer.apply_chat_template(messages, tools=TOOLS_SCHEMA if offered else None, tokenize=False)
        rows.append({"text": text})
    return rows
