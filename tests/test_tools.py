"""rlvr's `tools`: a tool call inside a GRPO rollout runs in the code sandbox, never in the trainer, and its
result is in the context the policy generates on; a template that cannot express tool calls is refused."""
import json
import os

import pytest

import posttrain.stages  # noqa: F401 (registers the stages)
from posttrain import hf
from posttrain.data import DataError
from posttrain.schema import build
from posttrain.stage import STAGES, Context
from posttrain.stages.rlvr.tools import PythonTool, Tools, check_tools, prepare_tokenizer, run_code
from posttrain.worlds import tinyworld, toolworld

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64)
# What the tool's code sees as its working folder shows where it ran: the sandbox's own, not the trainer's.
PROBE = "__import__('os').getcwd()"


def _save(tokenizer, path):
    hf.save_model(tinyworld.build_model(tokenizer, **TINY), tokenizer, path)
    return str(path)


def _rlvr(raw: dict, tmp_path):
    stage = STAGES["rlvr"]()
    problems = []
    cfg = build(stage.Config, raw, "rlvr", problems, lambda s, o: "no refs here")
    assert not problems and not stage.check(cfg), (problems, stage.check(cfg))
    ctx = Context("rlvr", tmp_path / "rlvr", tmp_path, stage.outputs)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return stage.run(cfg, ctx), ctx


def test_a_tool_call_in_a_rollout_runs_in_the_sandbox_and_its_result_is_in_context(tmp_path, monkeypatch):
    """The policy's turns are scripted (a random model would not call tools); everything else is the real
    rlvr stage: the tool world's template and response parser, TRL's tool loop, the sandbox, the reward."""
    from trl import GRPOTrainer

    model = _save(toolworld.build_tool_tokenizer(), tmp_path / "model")
    data = tmp_path / "rl.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in toolworld.rl_rows(4, seed=0)))
    contexts = []

    def scripted(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        tok = self.processing_class
        texts = [tok.decode(ids) for ids in prompt_ids]
        if "<result>" not in texts[0]:
            reply = f'<python>{json.dumps({"code": PROBE})}</python>'
        else:
            contexts.extend(texts)
            reply = "The answer is " + texts[0].rsplit("<result>", 1)[1].split("</result>")[0] + "."
        return [tok(reply + tok.eos_token, add_special_tokens=False)["input_ids"] for _ in prompt_ids], None

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", scripted)
    metrics, ctx = _rlvr({"model": model, "data": str(data), "num_generations": 2, "max_completion_length": 96,
                          "rewards": [{"name": "verifier"}], "tools": {"python": {}},
                          "train": {"max_steps": 1, "per_device_train_batch_size": 4, "logging_steps": 1}}, tmp_path)
    sandbox_cwd = "'/sandbox'" if _bubblewrap() else "posttrain-sandbox-"
    assert contexts and all("Tools: python" in c and sandbox_cwd in c.rsplit("<result>", 1)[1] for c in contexts), contexts
    assert repr(os.getcwd()) not in contexts[0]
    logged = [json.loads(line) for line in (ctx.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("tools/call_frequency", 0) > 0 and r.get("tools/failure_frequency") == 0 for r in logged), logged
    assert metrics["global_step"] == 1


def _bubblewrap() -> bool:
    from posttrain.rewards.sandbox import sandbox_kind

    return sandbox_kind() == "bubblewrap"


def test_the_python_tool_answers_values_errors_and_limits():
    spec = PythonTool(timeout_s=1, max_output_chars=60)
    assert run_code("37+45-12", spec) == "70"
    assert run_code("x = 6\nprint(x * 7)", spec) == "42"
    assert run_code("1/0", spec) == "error: exit code 1: ZeroDivisionError: division by zero"
    assert run_code("while True: pass", spec) == "error: CPU time limit exceeded"
    assert run_code("print('y' * 100)", spec) == "y" * 60 + "...(cut)"


def test_tools_need_a_template_that_can_express_tool_calls(tmp_path):
    assert check_tools(Tools(python=PythonTool()), "tulu")[0][0] == "chat_template"
    assert check_tools(Tools(), "model")[0][0] == "tools"
    with pytest.raises(DataError, match="cannot express tool calls"):
        prepare_tokenizer(tinyworld.build_tokenizer(), "tiny")
    no_parser = toolworld.build_tool_tokenizer()
    no_parser.response_template = None
    with pytest.raises(DataError, match="nothing can parse tool calls"):
        prepare_tokenizer(no_parser, "tiny")
    saved = hf.load_tokenizer(_save(toolworld.build_tool_tokenizer(), tmp_path / "m"))
    prepare_tokenizer(saved, "tool world")  # the template and the parser survive a save
