"""Tool use in the tool world: does GRPO's reward rise when the policy may call a Python tool?

A tiny model learns from teacher traces (posttrain.worlds.toolworld: where the tool is offered, a share of
the teachers call it, the rest work in their heads and are often wrong), then two GRPO runs start from it,
the same but for `tools: {python: {}}`. Prints both reward curves and greedy held-out exact match (with
the tool executed, in the sandbox, where it was offered).

    python bench/tool_use.py                 # runs/toolworld/run (a rerun reuses the finished stages)
    python bench/tool_use.py --heldout 400 --rl-steps 60
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def recipe(inputs: Path, args) -> str:
    rlvr = {"data": str(inputs / "rl.jsonl"), "loss_type": "dapo", "num_generations": 8, "temperature": 1.0,
            "max_completion_length": 96, "model": "${stages.base.output.model}",
            "train": {"learning_rate": args.rl_lr, "max_steps": args.rl_steps, "per_device_train_batch_size": 64,
                      "lr_scheduler_type": "constant", "save_steps": 10, "logging_steps": 1, "seed": 0}}
    stages = {
        "base": {"kind": "pretrain", "model": str(inputs / "init"), "data": str(inputs / "traces.jsonl"),
                 "max_length": 256, "packing": False,
                 "train": {"learning_rate": 3e-3, "max_steps": args.base_steps, "per_device_train_batch_size": 32,
                           "warmup_ratio": 0.05, "lr_scheduler_type": "warmup_stable_decay",
                           "lr_scheduler_kwargs": {"num_decay_steps": args.base_steps // 5}, "save_steps": 100,
                           "logging_steps": 20, "seed": 0}},
        "rl_tool": {"kind": "rlvr", **rlvr, "tools": {"python": {}, "max_calls": 2}},
        "rl_plain": {"kind": "rlvr", **rlvr},
    }
    return json.dumps({"name": "toolworld", "stages": stages}, indent=1)  # JSON is YAML


def prepare(inputs: Path, args) -> None:
    from posttrain import hf
    from posttrain.data import write_rows
    from posttrain.worlds import tinyworld, toolworld

    inputs.mkdir(parents=True, exist_ok=True)
    if not (inputs / "init").exists():
        tokenizer = toolworld.build_tool_tokenizer()
        hf.save_model(tinyworld.build_model(tokenizer, seed=0), tokenizer, inputs / "init")
    write_rows(inputs / "traces.jsonl", toolworld.trace_rows(args.traces, seed=1, tool_share=args.tool_share))
    write_rows(inputs / "rl.jsonl", toolworld.rl_rows(2000, seed=2))
    (inputs / "recipe.yaml").write_text(recipe(inputs, args))


def heldout_score(model_dir: Path, rows: list[dict], tools: bool, max_new: int = 96) -> tuple[float, float]:
    """(exact match, share of answers that called the tool): greedy, the tool run in the sandbox."""
    import torch
    from trl.chat_template_utils import parse_response

    from posttrain import hf
    from posttrain.rewards import score_rows
    from posttrain.stages.rlvr.tools import PythonTool, run_code
    from posttrain.worlds.toolworld import TOOLS_SCHEMA

    model, tok = hf.load_for_inference(str(model_dir), dtype="float32", padding_side="left")
    chats = [list(r["prompt"]) for r in rows]
    called = [False] * len(rows)
    for turn in range(2):  # the answer, or a tool call and then the answer
        todo = [i for i, c in enumerate(chats) if c[-1]["role"] != "assistant"]
        if not todo:
            break
        texts = [tok.apply_chat_template(chats[i], tools=TOOLS_SCHEMA if tools else None, add_generation_prompt=True,
                                         tokenize=False) for i in todo]
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new, do_sample=False)
        for i, ids, prefix in zip(todo, out[:, batch["input_ids"].shape[1]:].tolist(), batch["input_ids"].tolist()):
            ids = ids[:ids.index(tok.eos_token_id) + 1] if tok.eos_token_id in ids else ids
            message = parse_response(tok, ids, prefix=[t for t in prefix if t != tok.pad_token_id])
            chats[i].append(message)
            if tools and turn == 0 and message.get("tool_calls"):
                called[i] = True
                code = message["tool_calls"][0]["function"]["arguments"].get("code", "")
                chats[i].append({"role": "tool", "name": "python", "content": run_code(str(code), PythonTool())})
    verdicts = score_rows([c[len(r["prompt"]):] for c, r in zip(chats, rows)], rows, "numeric")
    return 100 * sum(v.score for v in verdicts) / len(rows), 100 * sum(called) / len(rows)


def curve(out: Path, stage: str) -> list[float]:
    rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
    return [r["reward"] for r in rows if "reward" in r]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "toolworld")
    ap.add_argument("--traces", type=int, default=8000)
    ap.add_argument("--tool-share", type=float, default=0.3)
    ap.add_argument("--base-steps", type=int, default=800)
    ap.add_argument("--rl-steps", type=int, default=40)
    ap.add_argument("--rl-lr", type=float, default=1e-4)
    ap.add_argument("--heldout", type=int, default=200)
    args = ap.parse_args(argv)
    args.out = args.out.resolve()  # the recipe's paths are read relative to the recipe
    prepare(args.out / "inputs", args)
    run = args.out / "run"
    cmd = [sys.executable, "-m", "posttrain.cli", "run", str(args.out / "inputs" / "recipe.yaml"), "--out", str(run)]
    print("$", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode:
        return 1
    from posttrain.worlds.toolworld import heldout_rows

    rows = heldout_rows(args.heldout)
    print("| model | tool offered | held-out exact match % | tool called % | reward first 5 steps | last 5 steps |\n|---|---|---|---|---|---|")
    for stage, tools in (("base", False), ("base", True), ("rl_plain", False), ("rl_tool", True)):
        score, called = heldout_score(run / stage / "model", rows, tools)
        rewards = curve(run, stage) if stage != "base" else []
        first, last = (f"{sum(rewards[:5]) / 5:.3f}", f"{sum(rewards[-5:]) / 5:.3f}") if rewards else ("", "")
        print(f"| {stage} | {'yes' if tools else 'no'} | {score:.1f} | {called:.1f} | {first} | {last} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
