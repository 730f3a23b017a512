"""Hugging Face checkpoints: loading, chat templates, and saving a folder that transformers and vLLM
load directly (safetensors, tokenizer, chat template, generation_config whose EOS matches the template)."""
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

COMMIT = re.compile(r"[0-9a-f]{40}")

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


def template_problem(value: str) -> str | None:
    """Why `value` is not a chat_template: `model`, a built-in name, or a Jinja template that renders every message
    of a test conversation. A mistyped name (tulu3, chatm1) would otherwise become a template whose whole output is
    that text: every prompt "chatm1", every response empty."""
    if value == "model" or value in CHAT_TEMPLATES:
        return None
    if "{{" not in value and "{%" not in value:
        from posttrain.schema import suggest

        names = ["model", *CHAT_TEMPLATES]
        return (f"unknown chat template {value!r:.80}{suggest(value.strip().lower(), names)}: give model (the "
                f"checkpoint's own), {' or '.join(CHAT_TEMPLATES)}, or a Jinja template")
    problem = dropped_turns(lambda messages: render_template(value, messages), ("user", "assistant"))
    return problem and f"not a usable Jinja chat template: {problem}"


def chat_template_field():
    """The `chat_template` key of every stage that applies one, checked by template_problem at validation."""
    from dataclasses import field

    return field(default="model", metadata={"check": template_problem, "help": (
        f"model (the checkpoint's own), {', '.join(CHAT_TEMPLATES)}, or a Jinja template (it must render every turn)")})


def render_template(template: str, messages: list[dict]) -> str:
    """`messages` rendered by a Jinja chat template as transformers renders it, without a tokenizer."""
    from transformers.utils.chat_template_utils import render_jinja_template

    return render_jinja_template([messages], chat_template=template, bos_token="<s>", eos_token="</s>")[0][0]


def dropped_turns(render, roles: tuple[str, ...]) -> str | None:
    """What is wrong when `render` (messages -> text) loses a turn of a conversation with these roles (a role the
    template does not know renders as nothing) or cannot render it at all; None when every turn shows."""
    messages = [{"role": role, "content": f"posttrain-probe-{i}"} for i, role in enumerate(roles)]
    try:
        text = render(messages)
    except Exception as e:  # a Jinja error, or the template's own raise_exception
        return f"the chat template cannot render turns {', '.join(roles)}: {type(e).__name__}: {str(e)[:200]}"
    lost = list(dict.fromkeys(m["role"] for m in messages if m["content"] not in text))
    return (f"the chat template drops {', '.join(map(repr, lost))} turns (their text would vanish from training); "
            "use roles it renders (system, user, assistant) or a template that renders these") if lost else None


class TurnCheck:
    """Checks conversations against a chat template: a DataError naming the row when a turn would not be rendered.
    One test render per distinct sequence of roles."""

    def __init__(self, render):
        self.render, self.seen = render, {}

    def __call__(self, messages: list[dict], where: str) -> list[dict]:
        from posttrain.data import DataError

        roles = tuple(m["role"] for m in messages)
        if roles not in self.seen:
            self.seen[roles] = dropped_turns(self.render, roles)
        if self.seen[roles]:
            raise DataError(f"{where}: {self.seen[roles]}")
        return messages

    @classmethod
    def of_tokenizer(cls, tokenizer) -> "TurnCheck":
        return cls(lambda messages: tokenizer.apply_chat_template(messages, tokenize=False))

    @classmethod
    def of_setting(cls, chat_template: str) -> "TurnCheck | None":
        """Validation's check: known from the recipe for a built-in or Jinja template, None for the model's own."""
        if chat_template == "model" or template_problem(chat_template):
            return None
        template = CHAT_TEMPLATES.get(chat_template, chat_template)
        return cls(lambda messages: render_template(template, messages))


def split_revision(model: str) -> tuple[str, str | None]:
    """`org/name@rev` -> ("org/name", "rev"); a local folder (which may contain '@') or an id without a
    revision -> (model, None). The revision is a branch, tag or commit, as from_pretrained takes it."""
    model = str(model)
    if "@" not in model or Path(model).exists():
        return model, None
    name, _, revision = model.rpartition("@")
    return name, revision


def hub_dataset(spec: str) -> tuple[str, str | None, str | None, str]:
    """`org/name[@rev][:config][:split]` (after `hf:`) -> (name, revision, config, split); split default train."""
    parts = spec.split(":")
    name, revision = split_revision(parts[0])
    return name, revision, (parts[1] if len(parts) == 3 else None), (parts[-1] if len(parts) > 1 else "train")


def hub_commit(model: str, kind: str = "models") -> str:
    """`org/name@commit` for a hub model: the commit its revision (default main) resolves to in the local
    hub cache, so the fingerprint changes when the branch moves; `org/name@revision` as given when the cache
    does not have it (offline, nothing downloaded yet)."""
    from huggingface_hub import constants

    name, revision = split_revision(model)
    revision = revision or "main"
    if not COMMIT.fullmatch(revision):
        cache = Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
        ref = cache / f"{kind}--{name.replace('/', '--')}" / "refs" / revision
        try:
            revision = ref.read_text().strip() or revision
        except OSError:
            pass
    return f"{name}@{revision}"


def vllm_problem(key: str, value: str) -> list[tuple[str, str]]:
    """A validation problem when `key` asks for vLLM and it is not installed (found without importing it)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return []
    return [(key, f"{value} needs vLLM, which is not installed here: pip install 'posttrain[vllm]' on a GPU machine, "
                  "or use the HF path")]


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def load_tokenizer(path: str, chat_template: str = "model"):
    """chat_template: 'model' (the checkpoint's own), a built-in name (tulu, chatml) or a Jinja string."""
    from transformers import AutoTokenizer

    name, revision = split_revision(path)
    tok = AutoTokenizer.from_pretrained(name, revision=revision)
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


def load_model(path: str, dtype: str = "auto", quantize: str = "none", reward_head: bool = False):
    """quantize: none, 4bit or 8bit (bitsandbytes, for QLoRA; needs CUDA). reward_head: a sequence classifier
    with one output (a reward model); from a causal LM checkpoint its `score` head starts random."""
    import torch

    torch_dtype = {"auto": torch.bfloat16 if bf16_supported() else torch.float32,
                   "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    name, revision = split_revision(path)
    kwargs = {"revision": revision, "dtype": torch_dtype}
    if quantize != "none":  # quantized weights are placed at load time: each process puts its copy on its own GPU
        kwargs.update(device_map={"": int(os.environ.get("LOCAL_RANK", 0))},
                      quantization_config=bnb_config(quantize, torch_dtype))
    if not reward_head:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(name, **kwargs)
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning  # the new head and dropped lm_head are expected

    with suppress_seqcls_warning():
        return AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, **kwargs)


@contextmanager
def whole_loading():
    """Models loaded inside are whole in this process. A live ZeRO-3 config (the trainer's) otherwise makes
    from_pretrained partition them, a collective: rank 0 alone merging an adapter for export would get 0-shaped
    base weights (on one rank) or hang (on several)."""
    from transformers.integrations import deepspeed as ds

    live = ds._hf_deepspeed_config_weak_ref and ds._hf_deepspeed_config_weak_ref()
    ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if live is not None:
            ds.set_hf_deepspeed_config(live)


def load_for_inference(path: str, dtype: str = "auto", padding_side: str = "right"):
    """(model, tokenizer) to score or generate with, the one loader of selection, pruning and eval: in eval
    mode on the accelerator when there is one, with a pad token. dtype as in load_model."""
    tokenizer = inference_tokenizer(path, padding_side)
    return load_model(path, dtype=dtype).to(device()).eval(), tokenizer


def inference_tokenizer(path: str, padding_side: str = "right"):
    """The checkpoint's tokenizer as it is, with a pad token (its eos when it has none) and the padding side."""
    from transformers import AutoTokenizer

    name, revision = split_revision(path)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def bnb_config(quantize: str, compute_dtype):
    """QLoRA's 4-bit setting (NF4 with double quantization, computing in the training dtype), or 8-bit."""
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: eos, the token the chat template closes an assistant turn with
    (Gemma's <end_of_turn>, Phi-3's <|end|>, ...) and the usual end markers in the vocabulary, each once."""
    from posttrain.chat_templates import end_of_turn

    markers = ["<|im_end|>", "<|eot_id|>", "<|end|>"]
    if isinstance(tokenizer.chat_template, str):
        try:
            markers.insert(0, end_of_turn(tokenizer))
        except Exception:  # noqa: BLE001 - a template that cannot render a turn adds nothing
            pass
    ids = [tokenizer.eos_token_id]
    for marker in markers:
        tid = tokenizer.convert_tokens_to_ids(marker)
        if marker in tokenizer.get_vocab() and tid not in ids:
            ids.append(tid)
    return ids


def fit_vocab(model, tokenizer) -> None:
    """Grow the embeddings to the tokenizer (a template may add an end-of-turn token). Called on every rank
    before training: under ZeRO-3 the resize gathers partitioned weights, a collective all ranks must enter."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))


class ExportError(Exception):
    pass


def save_model(model, tokenizer, out: Path, state_dict: dict | None = None) -> None:
    """Save an HF folder atomically: written to a temp folder, checked, then renamed into place.
    state_dict: the full weights when the model's own are partitioned (ZeRO-3), gathered by the caller."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    eos = end_of_turn_ids(tokenizer)
    if getattr(model, "generation_config", None) is not None:  # a reward model does not generate
        model.generation_config.eos_token_id = eos if len(eos) > 1 else eos[0]
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    # For whoever loads the export: generation uses the KV cache (training turned it off), and the tokenizer's
    # limit is the model's positions, not transformers' 1e30 "unset" (so truncation=True means something).
    positions = getattr(model.config, "max_position_embeddings", None)
    saved_limits = getattr(model.config, "use_cache", None), tokenizer.model_max_length
    if saved_limits[0] is not None:
        model.config.use_cache = True
    if positions and tokenizer.model_max_length > positions:
        tokenizer.model_max_length = positions
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    finally:  # the caller's objects are left as they were (a trainer may go on using them)
        if saved_limits[0] is not None:
            model.config.use_cache = saved_limits[0]
        tokenizer.model_max_length = saved_limits[1]
    check_export(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def check_export(folder: Path) -> None:
    """Every saved tensor is non-empty and, for a full model, has the shape its config gives it and none is
    missing: a partitioned (ZeRO-3) parameter saved as is would be 0-shaped."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING)

    saved = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            saved.update({k: tuple(st.get_slice(k).get_shape()) for k in st.keys()})
    if not saved:
        raise ExportError(f"{folder}: no weights were written")
    empty = [k for k, shape in saved.items() if 0 in shape]
    if empty:
        raise ExportError(f"{folder}: {len(empty)} empty tensors (e.g. {empty[0]}): partitioned weights were saved ungathered")
    if not (Path(folder) / "config.json").exists():
        return  # an adapter: no config to compare with
    config = AutoConfig.from_pretrained(folder)
    classifier = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    mapping = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING if classifier else MODEL_FOR_CAUSAL_LM_MAPPING
    with torch.device("meta"):  # the class itself, not from_config: that would enter ZeRO-3's collective init
        expected = {k: tuple(v.shape) for k, v in mapping[type(config)](config).state_dict().items()}
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    problems = [f"{k} is {saved[k]}, the config gives {expected.get(k)}" for k in saved if saved[k] != expected.get(k)]
    problems += [f"{k} is missing" for k in sorted(expected.keys() - saved.keys() - tied)]
    if problems:
        raise ExportError(f"{folder}: weights do not match the config: {problems[0]}")
