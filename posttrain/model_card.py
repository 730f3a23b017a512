"""The model card (README.md) of every model a stage exports: what made it (recipe, stage, kind, the model
and data it started from, the stages before it), its training keys and headline metrics, the versions, and
how to load it. Hugging Face's card format: YAML metadata, then Markdown."""
import json
from pathlib import Path

import yaml

from posttrain.provenance import describe
from posttrain.stage import is_ref, parse_ref


def write_model_card(folder: Path, *, recipe: str, stage: str, kind: str, config: dict, lineage: list[str],
                     metrics: dict, versions: dict, posttrain: dict | None) -> None:
    base = config.get("model")
    hub_base = isinstance(base, str) and not is_ref(base) and not Path(base).exists() and not base.startswith("builtin:")
    meta = {"library_name": "transformers", "tags": ["posttrain", kind],
            **({"base_model": base.split("@")[0]} if hub_base else {})}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {recipe} / {stage}", "",
             f"Made by the `{stage}` stage (kind `{kind}`) of the posttrain recipe `{recipe}`, "
             f"{describe(posttrain or {})}.", ""]
    rows = [("started from", _source(base)), ("data", _source(config.get("data"))),
            ("stages before it", " → ".join(lineage) or "none")]
    rows += [(f"train.{k}", _value(v)) for k, v in (config.get("train") or {}).items() if v not in ({}, [], None)]
    rows += [(k, _value(v)) for k, v in config.items() if k not in ("model", "data", "train", "launcher")
             and isinstance(v, (int, float, str, bool, list)) and v not in ([], "")]
    rows += [(f"metric {k}", f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in metrics.items()
             if isinstance(v, (int, float))]
    rows += [(f"version {k}", v) for k, v in versions.items()]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows if v]
    lines += ["", "## Use", "", "```python"] + (USE_REWARD_MODEL if kind == "reward_model" else USE_CAUSAL_LM) + ["```", ""]
    (folder / "README.md").write_text("\n".join(lines))


USE_CAUSAL_LM = [
    "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
    'path = "."  # this folder', "tokenizer = AutoTokenizer.from_pretrained(path)",
    "model = AutoModelForCausalLM.from_pretrained(path)",
    'ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt")',
    "# generation_config.json ends generation at the chat template's end of turn",
    "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:], skip_special_tokens=True))"]
USE_REWARD_MODEL = [
    "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
    'path = "."  # this folder', "tokenizer = AutoTokenizer.from_pretrained(path)",
    "model = AutoModelForSequenceClassification.from_pretrained(path)",
    'chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]',
    'print(model(tokenizer.apply_chat_template(chat, return_tensors="pt")).logits[0, 0])  # the reward']


def _value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _source(value) -> str:
    if value is None:
        return ""
    if is_ref(value):
        stage, output = parse_ref(value)
        return f"the `{output}` of stage `{stage}`"
    return f"`{value}`" if isinstance(value, str) else f"`{json.dumps(value)}`"
