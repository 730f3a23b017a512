"""What a user loading an exported model gets: a model card of its own (not TRL's "fine-tuned version of
[None]"), use_cache on, and a tokenizer whose model_max_length is the model's positions (not 1e30)."""
import json

from huggingface_hub import ModelCard

from conftest import write_recipe
from posttrain.recipe import load
from posttrain.runner import run

RECIPE = """
name: export
stages:
  data: {kind: tinyworld, pretrain_rows: 40, sft_rows: 20, rl_rows: 20}
  base:
    kind: pretrain
    model: builtin:tiny
    data: ${stages.data.output.pretrain}
    architecture: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2, intermediate_size: 64}
    max_length: 96
    train: {learning_rate: 3.0e-3, max_steps: 2, per_device_train_batch_size: 4, save_steps: 2, logging_steps: 1}
"""


def test_exported_model_has_its_card_cache_and_length(tmp_path):
    run_dir = tmp_path / "run"
    run(load(write_recipe(tmp_path, RECIPE)), run_dir, echo=lambda m: None, command_line=["posttrain", "run", "x"])
    model = run_dir / "base" / "model"
    config = json.loads((model / "config.json").read_text())
    tokenizer = json.loads((model / "tokenizer_config.json").read_text())
    assert config["use_cache"] is True and manifest_metrics(run_dir)["precision"] == "fp32"  # what auto became on CPU
    assert tokenizer["model_max_length"] == config["max_position_embeddings"]
    card = ModelCard.load(model / "README.md")
    assert card.data.library_name == "transformers" and "pretrain" in card.data.tags
    assert "# export / base" in card.text and "fine-tuned version of" not in card.text
    assert "| started from | `builtin:tiny` |" in card.text and "| train.learning_rate | 0.003 |" in card.text
    assert "the `pretrain` of stage `data`" in card.text and "AutoModelForCausalLM.from_pretrained(path)" in card.text
    manifest = json.loads((run_dir / "base" / "manifest.json").read_text())
    assert run(load(write_recipe(tmp_path, RECIPE)), run_dir, echo=lambda m: None)[1].action == "cached"
    assert manifest["status"] == "complete"


def manifest_metrics(run_dir):
    return json.loads((run_dir / "base" / "manifest.json").read_text())["metrics"]
