"""fp32 master weights: with `precision: bf16` and no DeepSpeed, weights load in fp32 and bf16 is autocast
only. A 5e-7 DPO step (Tülu 3's learning rate) then changes the weights; in pure bf16 it is below the
resolution of most of them (bf16 spacing near 0.02 is ~1e-4) and nothing trains."""
import json

import torch
from safetensors.torch import load_file

import posttrain.stages  # noqa: F401  (registers the stages)
from posttrain import hf
from posttrain.worlds import tinyworld
from posttrain.schema import build
from posttrain.stage import STAGES, Context


def test_a_5e_7_dpo_step_in_bf16_changes_the_weights(tmp_path):
    tok = tinyworld.build_tokenizer()
    model = tinyworld.build_model(tok, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=2, intermediate_size=128)
    hf.save_model(model, tok, tmp_path / "base")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"What is {i} plus 1?", "chosen": f"{i + 1}", "rejected": f"{i + 2}"}) + "\n"
                             for i in range(8)))
    raw = {"model": str(tmp_path / "base"), "data": str(pairs), "max_length": 64, "precompute_ref_log_probs": False,
           "train": {"learning_rate": 5e-7, "max_steps": 1, "per_device_train_batch_size": 8, "precision": "bf16",
                     "save_steps": 1, "logging_steps": 1}}
    stage = STAGES["dpo"]()
    problems = []
    cfg = build(stage.Config, raw, "dpo", problems, lambda s, o: "no refs here")
    assert not problems and not stage.check(cfg), problems
    ctx = Context("dpo", tmp_path / "dpo", tmp_path, stage.outputs)
    ctx.out_dir.mkdir()
    stage.run(cfg, ctx)
    before, after = load_file(tmp_path / "base" / "model.safetensors"), load_file(ctx.output("model") / "model.safetensors")
    changed = sum((after[k].float() != before[k].float()).sum().item() for k in before if ".layers." in k)
    total = sum(before[k].numel() for k in before if ".layers." in k)
    assert changed / total > 0.9, f"only {changed} of {total} layer weights changed"
    assert after["model.layers.0.mlp.up_proj.weight"].dtype == torch.float32  # the master weights, exported
