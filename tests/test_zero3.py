"""ZeRO-3 as on a cluster, in one CPU process: `stage3_param_persistence_threshold: 0` partitions every
parameter, however small, as an 8B model's are. SFT, DPO and RLVR must export the trained (gathered)
weights, equal to their last checkpoint's, in a folder plain transformers loads; an export whose shapes
do not match the model's config is never marked complete."""
import json
from pathlib import Path

import pytest

from conftest import write_mini_chain
from posttrain.recipe import load
from posttrain.runner import run

# Small matrices behave like large ones: nothing stays whole on every rank.
ZERO3_ALL_PARTITIONED = {
    "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                          "stage3_gather_16bit_weights_on_model_save": True},
}
TRAINED = ("sft", "dpo", "rlvr")


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    return state


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero3")
    ds = root / "zero3_all.json"
    ds.write_text(json.dumps(ZERO3_ALL_PARTITIONED))
    launcher = f"{{type: accelerate, num_processes: 1, deepspeed: {ds}}}"
    recipe = load(write_mini_chain(root), [f"stages.{s}.launcher={launcher}" for s in TRAINED])
    run(recipe, root / "run", echo=lambda m: None)
    return root / "run"


@pytest.mark.slow
@pytest.mark.parametrize("stage", TRAINED)
def test_zero3_export_equals_last_checkpoint_and_reloads(zero3_run, stage):
    from transformers import AutoConfig, AutoModelForCausalLM

    manifest = json.loads((zero3_run / stage / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    exported = zero3_run / manifest["artifacts"]["model"]
    checkpoints = sorted((zero3_run / stage / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    last = _tensors(checkpoints[-1])
    out = _tensors(exported)
    assert out.keys() == last.keys()
    for name, tensor in out.items():
        assert tensor.numel() > 0 and tensor.shape == last[name].shape, (name, tensor.shape, last[name].shape)
        assert tensor.float().equal(last[name].float()), name
    config = AutoConfig.from_pretrained(exported)
    assert out["model.embed_tokens.weight"].shape == (config.vocab_size, config.hidden_size)
    model = AutoModelForCausalLM.from_pretrained(exported)  # plain transformers, no DeepSpeed
    assert model.get_input_embeddings().weight.shape == (config.vocab_size, config.hidden_size)


def test_export_check_refuses_empty_or_misshapen_weights(tmp_path):
    """What rank 0 alone saves from a ZeRO-3 model: (0,)-shaped tensors. The check refuses it, and a model
    that does not fit its config, before the folder is put in place (so the stage is not marked complete)."""
    import torch
    from safetensors.torch import load_file, save_file

    from posttrain import hf
    from posttrain.worlds import tinyworld

    tok = tinyworld.build_tokenizer()
    model = tinyworld.build_model(tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=2, intermediate_size=64)
    hf.save_model(model, tok, tmp_path / "good")  # passes the check
    weights = tmp_path / "good" / "model.safetensors"
    state = load_file(weights)
    for name, broken in [("model.norm.weight", torch.empty(0)), ("model.norm.weight", torch.ones(31)),
                         ("model.layers.0.mlp.up_proj.weight", None)]:
        bad = dict(state)
        if broken is None:
            del bad[name]
        else:
            bad[name] = broken
        save_file(bad, weights)
        with pytest.raises(hf.ExportError, match="model.norm.weight|up_proj"):
            hf.check_export(tmp_path / "good")
    with pytest.raises(hf.ExportError, match="empty"):
        hf.save_model(model, tok, tmp_path / "zero3", state_dict={k: torch.empty(0) for k in state})
    assert not (tmp_path / "zero3").exists()
