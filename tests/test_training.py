"""The training stages on a tiny model: exact masking, every DPO loss, cached reference log-probs, sum
loss, and an exported checkpoint that reloads and stops."""
import json
import math
import typing

import pytest
import torch

from posttrain import hf
from posttrain.formats import to_messages
from posttrain.worlds import tinyworld
from posttrain.schema import build
from posttrain.stage import STAGES, Context
from posttrain.stages.dpo import DPOLoss
from posttrain.stages.sft import SFTStageConfig


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny model saved as an HF folder, as the pretrain stage would."""
    path = tmp_path_factory.mktemp("tiny") / "model"
    tok = tinyworld.build_tokenizer()
    model = tinyworld.build_model(tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=2, intermediate_size=64)
    hf.save_model(model, tok, path)
    return path


def run_stage(kind: str, raw: dict, tmp_path) -> tuple[dict, Context]:
    stage = STAGES[kind]()
    problems = []
    cfg = build(stage.Config, raw, kind, problems, lambda s, o: "no refs in these tests")
    assert not problems and not stage.check(cfg), problems
    out = tmp_path / kind
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(kind, out, tmp_path, stage.outputs)
    return stage.run(cfg, ctx), ctx


def test_assistant_only_masking_trains_exactly_the_reply_and_eos(tiny_model_dir, tmp_path):
    from trl import SFTConfig, SFTTrainer
    from datasets import Dataset

    tok = hf.load_tokenizer(str(tiny_model_dir))
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4."}, {"role": "user", "content": "and 3+3?"},
            {"role": "assistant", "content": "6."}]
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, max_length=128, use_cpu=True, bf16=False,
                     report_to=[])
    trainer = SFTTrainer(model=hf.load_model(str(tiny_model_dir)), args=args, processing_class=tok,
                         train_dataset=Dataset.from_list([{"messages": chat}]))
    row = trainer.train_dataset[0]
    trained = "".join(tok.decode([t]) for t, label in zip(row["input_ids"], row["labels"]) if label != -100)
    assert trained == "4.<|endoftext|>6.<|endoftext|>"


def test_inspect_marks_the_trained_tokens(tiny_model_dir, tmp_path):
    from posttrain.stages.sft import inspect_example

    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "1+1?", "completion": "2."}) + "\n")
    cfg = SFTStageConfig(model=str(tiny_model_dir), data=str(data))
    shown = inspect_example(cfg, Context("sft", tmp_path, tmp_path, {}))
    assert shown.startswith("example 0: 12 tokens, 3 trained")
    assert shown.endswith("<|user|>\n1+1?\n<|assistant|>\n[2.<|endoftext|>]")


def test_row_formats_convert_or_fail_with_the_row(tmp_path):
    assert to_messages({"instruction": "Add", "input": "1 1", "output": "2"}, "auto", "f:1")[0]["content"] == "Add\n\n1 1"
    assert to_messages({"prompt": "q", "completion": "a"}, "auto", "f:1")[1] == {"role": "assistant", "content": "a"}
    with pytest.raises(Exception, match="f.jsonl: row 7: row fits no SFT format"):
        to_messages({"text": "x"}, "auto", "f.jsonl: row 7")
    with pytest.raises(Exception, match="at least one assistant turn"):
        to_messages({"messages": [{"role": "user", "content": "hi"}]}, "auto", "f:1")


def test_sft_loss_goes_down_and_sum_reduction_is_a_sum(tiny_model_dir, tmp_path):
    data = tmp_path / "sft.jsonl"
    rows = tinyworld.sft_candidate_rows(64, seed=3, mix={"arith": 1.0})
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["candidates"][2]["response"]}) + "\n"
                            for r in rows))
    train = {"learning_rate": 3e-3, "max_steps": 15, "per_device_train_batch_size": 8, "logging_steps": 1, "save_steps": 100}
    mean, _ = run_stage("sft", {"model": str(tiny_model_dir), "data": str(data), "max_length": 160, "train": train}, tmp_path / "mean")
    assert mean["final_loss"] < mean["first_loss"] - 0.3
    summed, _ = run_stage("sft", {"model": str(tiny_model_dir), "data": str(data), "max_length": 160,
                                  "loss_reduction": "sum", "train": {**train, "max_steps": 1}}, tmp_path / "sum")
    # Same first batch: the summed loss is the mean loss times the number of trained tokens (~30 per reply).
    ratio = summed["first_loss"] / mean["first_loss"]
    assert 8 * 10 < ratio < 8 * 60, ratio


@pytest.fixture(scope="module")
def preference_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    rows = tinyworld.sft_candidate_rows(32, seed=4, mix={"arith": 1.0})
    with open(path, "w") as f:
        for r in rows:
            by = {c["source"]: c["response"] for c in r["candidates"]}
            f.write(json.dumps({"prompt": r["prompt"], "chosen": by["tutor"], "rejected": by["guesser"]}) + "\n")
    return path


@pytest.mark.parametrize("loss", typing.get_args(DPOLoss))
def test_every_dpo_loss_type_trains(loss, tiny_model_dir, preference_file, tmp_path):
    raw = {"model": str(tiny_model_dir), "data": str(preference_file), "loss_type": [loss], "max_length": 160,
           "label_smoothing": 0.1 if loss == "exo_pair" else 0.0,
           "train": {"learning_rate": 1e-3, "max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1}}
    metrics, ctx = run_stage("dpo", raw, tmp_path)
    assert metrics["global_step"] == 2 and math.isfinite(metrics["final_loss"])
    assert (ctx.output("model") / "model.safetensors").exists()


def test_cached_reference_logprobs_match_live_ones(tiny_model_dir, preference_file, tmp_path):
    def losses(precompute):
        raw = {"model": str(tiny_model_dir), "data": str(preference_file), "precompute_ref_log_probs": precompute,
               "max_length": 160, "train": {"learning_rate": 1e-3, "max_steps": 4, "per_device_train_batch_size": 4,
                                            "logging_steps": 1}}
        _, ctx = run_stage("dpo", raw, tmp_path / str(precompute))
        return [r["loss"] for r in map(json.loads, (ctx.out_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]

    live, cached = losses(False), losses(True)
    assert len(live) == 4 and live == pytest.approx(cached, abs=1e-5)


def test_repeated_pairs_warning_counts_pair_visits():
    from types import SimpleNamespace

    from posttrain.stages.dpo import repeated_pairs_warning

    def args(max_steps=-1, epochs=1.0):  # effective batch 4 x 4 x 2 = 32 pairs per optimizer step
        return SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=4, world_size=2,
                               max_steps=max_steps, num_train_epochs=epochs)

    assert "each of 200 pairs 4.8 times (30 steps × 32 per step)" in repeated_pairs_warning(200, args(max_steps=30))
    assert repeated_pairs_warning(200, args(max_steps=7)) is None  # 7 x 32 = 224: one pass, last batch partial
    assert "each of 200 pairs 2.0 times (num_train_epochs=2)" in repeated_pairs_warning(200, args(epochs=2))
    assert repeated_pairs_warning(200, args(epochs=1)) is None


def test_dpo_on_few_pairs_warns_and_records_it(tiny_model_dir, preference_file, tmp_path, caplog):
    few = tmp_path / "few.jsonl"
    few.write_text("".join(preference_file.read_text().splitlines(keepends=True)[:4]))
    raw = {"model": str(tiny_model_dir), "data": str(few), "max_length": 160,
           "train": {"learning_rate": 1e-3, "max_steps": 3, "per_device_train_batch_size": 2}}
    with caplog.at_level("WARNING", logger="posttrain"):
        metrics, _ = run_stage("dpo", raw, tmp_path)
    expected = "each of 4 pairs 1.5 times (3 steps × 2 per step)"
    assert any(expected in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert [w for w in metrics["warnings"] if expected in w]


def test_lora_export_reloads_with_the_logits_of_the_in_memory_merge(tiny_model_dir, tmp_path):
    """The export shared by LoRA and QLoRA: the saved adapter on a fresh, unquantized base, merged."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from posttrain.training import Lora, export_model, peft_config

    tok = hf.load_tokenizer(str(tiny_model_dir))
    rows = [{"messages": [{"role": "user", "content": "Say ok."}, {"role": "assistant", "content": "ok"}]}] * 16
    args = SFTConfig(output_dir=str(tmp_path / "ckpt"), max_steps=5, learning_rate=1e-2, per_device_train_batch_size=8,
                     use_cpu=True, bf16=False, report_to=[], save_strategy="no")
    lora = peft_config(Lora(r=4, alpha=8, dropout=0.0))
    trainer = SFTTrainer(model=hf.load_model(str(tiny_model_dir)), args=args, processing_class=tok,
                         train_dataset=Dataset.from_list(rows), peft_config=lora)
    trainer.train()
    export_model(trainer.model, tok, tmp_path / "export", merge_into=str(tiny_model_dir))

    ids = tok("<|user|>\nSay ok.\n<|assistant|>\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export")(ids).logits
        merged = trainer.model.merge_and_unload().eval()(ids).logits
        base = hf.load_model(str(tiny_model_dir))(ids).logits
    assert not (tmp_path / "export" / "adapter_config.json").exists()
    assert (exported - base).abs().max() > 1e-3  # training moved the weights: the merge is not a no-op
    torch.testing.assert_close(exported, merged, atol=1e-5, rtol=1e-5)


def test_lora_stage_exports_full_weights_again_after_resuming_its_last_checkpoint(tiny_model_dir, tmp_path):
    """A rerun finds the finished checkpoint and loads it instead of training: the adapter's saved keys
    leave out its name, so a plain load_state_dict would silently export an untrained adapter."""
    from safetensors.torch import load_file

    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "Say ok.", "completion": "ok"}) + "\n")
    raw = {"model": str(tiny_model_dir), "data": [{"path": str(data), "count": 16}], "max_length": 32,
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "merge": True},
           "train": {"learning_rate": 1e-2, "max_steps": 3, "per_device_train_batch_size": 8, "save_steps": 1}}
    exports = []
    for _ in range(2):
        _, ctx = run_stage("sft", raw, tmp_path)
        assert not (ctx.output("model") / "adapter_config.json").exists()
        exports.append(load_file(ctx.output("model") / "model.safetensors"))
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(exports[0][k], base[k]) for k in base)
    assert all(torch.equal(exports[0][k], exports[1][k]) for k in exports[0])


def test_hh_rlhf_transcripts_split_at_the_last_assistant_turn():
    from posttrain.data import read_rows, shared_file
    from posttrain.formats import to_preference

    row = read_rows(shared_file("hh_rlhf_harmless_base/test.jsonl.gz"))[0]
    pref = to_preference(row, "hh:1")
    assert pref["prompt"][-1]["role"] == "user" and pref["chosen"][0]["role"] == "assistant"
    assert len(pref["chosen"]) == len(pref["rejected"]) == 1 and pref["chosen"] != pref["rejected"]


def test_exported_checkpoint_reloads_and_stops_at_eos(tiny_model_dir, tmp_path):
    """Teach the model to answer and stop, export it, reload with plain transformers, and generate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "Say ok.", "completion": "ok"}) + "\n")
    raw = {"model": str(tiny_model_dir), "data": [{"path": str(data), "count": 64}], "max_length": 32,
           "train": {"learning_rate": 1e-2, "max_steps": 40, "per_device_train_batch_size": 8}}
    _, ctx = run_stage("sft", raw, tmp_path)
    out = ctx.output("model")
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.generation_config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.chat_template and "generation" in tok.chat_template
    prompt = tok.apply_chat_template([{"role": "user", "content": "Say ok."}], add_generation_prompt=True, return_tensors="pt",
                                     return_dict=True)
    with torch.no_grad():
        ids = model.generate(**prompt, max_new_tokens=10, do_sample=False)[0, prompt["input_ids"].shape[1]:].tolist()
    assert tok.eos_token_id in ids and tok.decode(ids[:ids.index(tok.eos_token_id)]) == "ok"


def test_grpo_with_a_verifier_raises_reward(tiny_model_dir, tmp_path):
    """An SFT model that answers 7 or 3 about equally; RLVR with the numeric verifier (truth: 7) must
    move it to 7."""
    sft_data, rl_data = tmp_path / "sft.jsonl", tmp_path / "rl.jsonl"
    sft_data.write_text("".join(json.dumps({"prompt": "Pick a number.", "completion": f"The answer is {n}."}) + "\n"
                                for n in [7, 3] * 32))
    rl_data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": "Pick a number."}],
                                           "ground_truth": "7", "verifier": "numeric"}) + "\n" for _ in range(64)))
    _, sft_ctx = run_stage("sft", {"model": str(tiny_model_dir), "data": str(sft_data), "max_length": 64,
                                   "train": {"learning_rate": 1e-2, "max_steps": 30, "per_device_train_batch_size": 16}},
                           tmp_path / "sft")
    metrics, ctx = run_stage("rlvr", {
        "model": str(sft_ctx.output("model")), "data": str(rl_data), "num_generations": 8, "temperature": 1.0,
        "max_completion_length": 24, "train": {"learning_rate": 5e-3, "max_steps": 12, "per_device_train_batch_size": 32,
                                               "logging_steps": 1, "lr_scheduler_type": "constant"}}, tmp_path / "rl")
    logged = [r for r in map(json.loads, (ctx.out_dir / "metrics.jsonl").read_text().splitlines()) if "rewards/verifier/mean" in r]
    rewards = [r["rewards/verifier/mean"] for r in logged]
    assert len(rewards) == 12
    # beside the reward, each step: the share of completions the verifier could not judge (none here)
    assert all(r[f"failures/numeric/{kind}"] == 0.0 for r in logged for kind in ("timeout", "crash", "sandbox_limit"))
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.2, rewards
