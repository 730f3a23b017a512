"""posttrain's SFT, DPO and RLVR stages against the same run through plain TRL (bench/trl_reference.py), on a cut
of the real SmolLM2-135M-Instruct with its own tokenizer and chat template: same rows in the same order, same
hyperparameters, so the same loss at every step (and, for SFT, the same trained-token masks)."""
import json
import sys

import pytest
from datasets import load_from_disk

from conftest import REPO, posttrain_cli, write_recipe
from posttrain.data import read_rows

sys.path.insert(0, str(REPO / "bench"))
import trl_reference  # noqa: E402

TRAIN = dict(learning_rate=2.0e-4, max_steps=3, per_device_train_batch_size=2)
RTOL = 1e-4  # float32 on one thread: the same kernels in the same order; only summation order may differ


def _posttrain(tmp_path, stage: str, body: str):
    """Run a one-stage recipe; (its metrics rows, its prepared dataset rows)."""
    recipe = write_recipe(tmp_path, f"name: parity\nstages:\n  {stage}:\n{body}")
    posttrain_cli("run", recipe, "--out", tmp_path / "run", check=True, timeout=280)
    stage_dir = tmp_path / "run" / stage
    return read_rows(stage_dir / "metrics.jsonl"), stage_dir


def _assert_same_losses(ours: list[dict], theirs: list[dict], steps: int) -> None:
    ours, theirs = trl_reference.losses(ours), trl_reference.losses(theirs)
    assert sorted(ours) == sorted(theirs) == list(range(1, steps + 1)), (ours, theirs)
    for step in ours:
        assert ours[step] == pytest.approx(theirs[step], rel=RTOL), f"step {step}: posttrain {ours[step]}, TRL {theirs[step]}"


def test_sft_equals_trl(tmp_path, smollm2_cut):
    from transformers import AutoTokenizer

    from posttrain import chat_templates

    rows = read_rows(REPO.parent / "shared/data/gsm8k/train.jsonl")[:8]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["question"], "completion": r["answer"]}) + "\n" for r in rows))
    metrics, stage_dir = _posttrain(tmp_path, "sft", f"""
    kind: sft
    model: {smollm2_cut}
    data: {data}
    max_length: 128
    train: {{learning_rate: 2.0e-4, max_steps: 3, per_device_train_batch_size: 2, logging_steps: 1, save_steps: 3}}
""")
    messages = load_from_disk(str(stage_dir / "dataset")).to_list()  # the mixture, in posttrain's order
    # The model's ChatML template has no generation markers: TRL refuses it for assistant-only loss, so the TRL
    # user marks it by hand; posttrain's marked copy is that template (tests/test_chat_templates.py checks it).
    marked, _ = chat_templates.training_template(AutoTokenizer.from_pretrained(smollm2_cut))
    reference = trl_reference.sft(str(smollm2_cut), messages, str(tmp_path / "trl"), chat_template=marked, **TRAIN,
                                  max_length=128, assistant_only_loss=True)
    _assert_same_losses(metrics, reference.state.log_history, 3)
    ours = {r["step"]: r for r in metrics if "num_tokens" in r}
    theirs = {r["step"]: r for r in reference.state.log_history if "num_tokens" in r}
    assert all(ours[s]["num_tokens"] == theirs[s]["num_tokens"] for s in theirs)  # the same tokens seen
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["metrics"]["dropped_no_trained_token"] == len(messages) - len(reference.train_dataset) == 1
    tokenizer = reference.processing_class  # what trains: the answer and its end-of-turn token, nothing before it
    for row in reference.train_dataset:
        example = reference.data_collator([row])
        text = tokenizer.decode(example["input_ids"][0][example["labels"][0] != -100])
        answer = row["messages"][-1]["content"] + "<|im_end|>"
        assert text and answer.startswith(text) and (len(example["input_ids"][0]) == 128 or text == answer)



def test_sft_whose_every_prompt_fills_max_length_is_a_data_error_before_training(tmp_path, smollm2_cut):
    # TRL drops every example (no trained token is left) and then fails deep inside its sampler ("num_samples=0")
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": "Say something.", "completion": "OK."}) + "\n" for _ in range(4)))
    recipe = write_recipe(tmp_path, f"""name: fills\nstages:\n  sft:\n    kind: sft\n    model: {smollm2_cut}
    data: {data}\n    max_length: 24\n    train: {{max_steps: 1, per_device_train_batch_size: 2}}\n""")
    proc = posttrain_cli("run", recipe, "--out", tmp_path / "run", timeout=200)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "none of the 4 examples has a trained token within max_length=24" in out, out[-3000:]
    assert "num_samples" not in out and not list((tmp_path / "run" / "sft").glob("checkpoint-*"))

def test_dpo_equals_trl(tmp_path, smollm2_cut):
    rows = [r for r in read_rows(REPO.parent / "shared/data/hh_rlhf_harmless_base/test.jsonl.gz")[:6]]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics, stage_dir = _posttrain(tmp_path, "dpo", f"""
    kind: dpo
    model: {smollm2_cut}
    data: {data}
    max_length: 96
    beta: 0.1
    train: {{learning_rate: 2.0e-4, max_steps: 3, per_device_train_batch_size: 2, logging_steps: 1, save_steps: 3}}
""")
    pairs = load_from_disk(str(stage_dir / "dataset")).to_list()  # the HH transcripts as posttrain split them
    reference = trl_reference.dpo(str(smollm2_cut), pairs, str(tmp_path / "trl"), **TRAIN, max_length=96, beta=0.1,
                                  loss_type=["sigmoid"], precompute_ref_log_probs=True)
    _assert_same_losses(metrics, reference.state.log_history, 3)


def test_grpo_equals_trl(tmp_path, smollm2_cut):
    rows = read_rows(REPO.parent / "shared/data/gsm8k/train.jsonl")[:4]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(
        {"prompt": [{"role": "user", "content": r["question"]}], "ground_truth": r["answer"].split("####")[-1].strip()}) + "\n"
        for r in rows))
    grpo = dict(num_generations=4, max_completion_length=12, temperature=1.0, beta=0.0, loss_type="dapo", epsilon=0.2,
                scale_rewards="group", num_iterations=1)
    metrics, _ = _posttrain(tmp_path, "rlvr", f"""
    kind: rlvr
    model: {smollm2_cut}
    data: {data}
    rewards: [{{name: numeric}}]
    num_generations: 4
    max_completion_length: 12
    train: {{learning_rate: 2.0e-4, max_steps: 3, per_device_train_batch_size: 4, logging_steps: 1, save_steps: 3}}
""")
    prompts = read_rows(data)
    reference = trl_reference.grpo(str(smollm2_cut), prompts, str(tmp_path / "trl"), **{**TRAIN, "per_device_train_batch_size": 4},
                                   **grpo)
    ours = {r["step"]: r for r in metrics if "reward" in r}
    theirs = {r["step"]: r for r in reference.state.log_history if "reward" in r}
    assert sorted(ours) == sorted(theirs) == [1, 2, 3]
    for step in ours:  # the same samples (same seed), scored alike, give the same rewards and loss
        assert ours[step]["reward"] == pytest.approx(theirs[step]["reward"], abs=1e-6)
        assert ours[step]["completions/mean_length"] == theirs[step]["completions/mean_length"]
    _assert_same_losses(metrics, reference.state.log_history, 3)
