"""Hugging Face checkpoints: loading, chat templates, and saving a folder that transformers and vLLM
load directly (safetensors, tokenizer, chat template, generation_config whose EOS matches the template)."""
import os
import shutil
from pathlib import Path

# Assistant content sits inside {% generation %} markers so TRL can train on assistant tokens only.
CHAT_TEMPLATES = {
    "tulu": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
        "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
        "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
    "chatml": (
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
        "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}
# The token that ends an assistant turn under each built-in template (None: the tokenizer's eos).
END_OF_TURN = {"tulu": None, "chatml": "<|im_end|>"}


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def load_tokenizer(path: str, chat_template: str = "model"):
    """chat_template: 'model' (the checkpoint's own), a built-in name (tulu, chatml) or a Jinja string."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if chat_template != "model":
        apply_chat_template(tok, chat_template)
    elif not tok.chat_template:
        raise ValueError(f"{path} has no chat template: set chat_template to tulu, chatml or a Jinja string")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def apply_chat_template(tok, chat_template: str) -> None:
    tok.chat_template = CHAT_TEMPLATES.get(chat_template, chat_template)
    end = END_OF_TURN.get(chat_template)
    if end and end not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [end]})
    if end:
        tok.eos_token = end


def load_model(path: str, dtype: str = "auto", quantize: str = "none"):
    """quantize: none, 4bit or 8bit (bitsandbytes, for QLoRA; needs CUDA)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"auto": torch.bfloat16 if bf16_supported() else torch.float32,
                   "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    if quantize == "none":
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    # Quantized weights are placed at load time: each process puts its copy on its own GPU.
    gpu = {"": int(os.environ.get("LOCAL_RANK", 0))}
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, device_map=gpu,
                                                quantization_config=bnb_config(quantize, torch_dtype))


def bnb_config(quantize: str, compute_dtype):
    """QLoRA's 4-bit setting (NF4 with double quantization, computing in the training dtype), or 8-bit."""
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: eos, plus the template's own end marker if distinct."""
    ids = [tokenizer.eos_token_id]
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if marker in tokenizer.get_vocab() and tid not in ids:
            ids.append(tid)
    return ids


def save_model(model, tokenizer, out: Path) -> None:
    """Save an HF folder atomically: written to a temp folder, then renamed into place."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    eos = end_of_turn_ids(tokenizer)
    model.generation_config.eos_token_id = eos if len(eos) > 1 else eos[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
