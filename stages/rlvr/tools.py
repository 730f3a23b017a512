"""Python tools for the RL policy: rlvr's `tools` key, on TRL's GRPOTrainer `tools`.

The policy calls a tool by writing the call in its chat template's tool-call markup; TRL parses it out of
the completion with the tokenizer's response parser (`tokenizer.response_template`, or one TRL knows for
the template), calls the function below, renders the result as a `tool` message and generates on. The
function never runs the policy's code in the trainer: each call is a fresh program in the code sandbox
(posttrain.rewards.sandbox, bubblewrap), with CPU, memory and wall-clock limits. The reward terms score
the last assistant message, the one after the tool results.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from posttrain.data import DataError

# Runs in the sandbox: the code as a module, then the value of a last bare expression printed (as a REPL
# does), so `37+45-12` answers 70 without a print.
_REPL = """
import ast as _ast
_tree = _ast.parse(%(code)r, "<tool>")
_last = _tree.body.pop() if _tree.body and isinstance(_tree.body[-1], _ast.Expr) else None
_scope = {"__name__": "__main__"}
exec(compile(_tree, "<tool>", "exec"), _scope)
if _last is not None:
    _value = eval(compile(_ast.Expression(_last.value), "<tool>", "eval"), _scope)
    if _value is not None:
        print(repr(_value))
"""


@dataclass
class PythonTool:
    timeout_s: float = field(default=2.0, metadata={"gt": 0, "help": "CPU seconds per call (wall-clock backstop 3x + 2 s)"})
    memory_mb: int = field(default=512, metadata={"ge": 64})
    max_output_chars: int = field(default=500, metadata={"ge": 1, "help": "longer output is cut (the model reads it back)"})


@dataclass
class Tools:
    python: PythonTool | None = field(default=None, metadata={"help": "`python: {}`: run code, answer what it prints"})
    max_calls: int = field(default=4, metadata={"ge": 1, "help": "tool-calling rounds per completion (TRL's max_tool_calling_iterations)"})


def check_tools(tools: Tools | None, chat_template: str) -> list[tuple[str, str]]:
    """Recipe-level problems; whether the model's own template can call tools is checked when it loads."""
    from posttrain.hf import CHAT_TEMPLATES

    if tools is None:
        return []
    if tools.python is None:
        return [("tools", "names no tool: set tools.python: {} (or remove the tools key)")]
    if chat_template in CHAT_TEMPLATES:
        return [("chat_template", f"the built-in {chat_template} template has no tool-call markup, so the policy could "
                                  "not call tools: keep chat_template: model with a tool-calling model (Qwen3, Llama 3.1, "
                                  "the tool world's), or give a Jinja template that renders tool_calls and tool messages")]
    return []


def grpo_tool_args(tools: Tools | None) -> dict:
    return {} if tools is None else {"max_tool_calling_iterations": tools.max_calls}


def tool_functions(tools: Tools) -> list:
    """The callables TRL offers the policy; TRL reads each one's name, type hints and docstring for the schema."""
    spec = tools.python

    def python(code: str) -> str:
        """Run Python code (standard library only, no network, no files kept) and return what it prints;
        the value of a last bare expression is printed for you.

        Args:
            code: the Python source to run, e.g. 37+45-12
        """
        return run_code(code, spec)

    return [python]


def run_code(code: str, spec: PythonTool) -> str:
    """What the model reads back: the program's output, or its error (the last line of the traceback)."""
    from posttrain.rewards.sandbox import run_python

    result = run_python(_REPL % {"code": code}, timeout_s=spec.timeout_s, memory_mb=spec.memory_mb,
                        max_output=4 * spec.max_output_chars)
    text = result.output if result.passed else f"error: {result.reason}"
    text = text.strip()
    return text if len(text) <= spec.max_output_chars else text[:spec.max_output_chars] + "...(cut)"


def prepare_tokenizer(tokenizer, model: str) -> None:
    """Fail before any model loads when the policy could not call tools: TRL needs a chat template that renders
    an assistant's tool_calls and tool messages, and a parser for the tool calls in a completion. TRL appends
    each tool result's tokens to the completion, so the template must render a conversation's start the same
    whatever follows (prefix-preserving), or be one TRL has a training variant of."""
    from trl.chat_template_utils import (add_response_schema, get_training_chat_template,
                                         is_chat_template_prefix_preserving, supports_tool_calling)

    if not supports_tool_calling(tokenizer):
        raise DataError(f"tools: the chat template of {model} cannot express tool calls (it drops the assistant's "
                        "tool_calls or the tool messages); use a model whose template has tool-call markup, or set "
                        "chat_template to a Jinja template that renders both")
    if getattr(tokenizer, "response_template", None) is None and getattr(tokenizer, "response_schema", None) is None:
        try:
            add_response_schema(tokenizer)
        except ValueError:
            raise DataError(f"tools: nothing can parse tool calls out of {model}'s completions: its tokenizer has no "
                            "response_template and TRL knows no parser for its chat template; save one in its "
                            "tokenizer_config.json (see transformers' chat response parsing docs, or "
                            "posttrain.worlds.toolworld for an example)") from None
    if not is_chat_template_prefix_preserving(tokenizer):
        try:
            get_training_chat_template(tokenizer)
        except ValueError:
            raise DataError(f"tools: the chat template of {model} renders earlier messages differently once a tool "
                            "message follows (not prefix-preserving), and TRL has no training variant of it; give a "
                            "chat_template that renders each message the same whatever comes after it") from None
