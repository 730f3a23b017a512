"""The report's training sections: a hyperparameter table (a column per stage, from the resolved config
the runner records beside each stage's manifest) and the training curves of each stage's metrics.jsonl."""
from pathlib import Path

import yaml

from posttrain.data import read_rows
from posttrain.eval import plots
from posttrain.eval.render import Block, Figure, Heading, Para, Table


def _get(config: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(part)
    return config


def _steps(c: dict):
    steps = _get(c, "train.max_steps")
    return steps if steps is not None and steps > 0 else (f"{_get(c, 'train.num_train_epochs')} epochs" if "train" in c else None)


def _processes(c: dict):
    launcher = c.get("launcher") or {}
    return launcher.get("num_processes", 1) * launcher.get("num_machines", 1) if "train" in c else None


def _effective_batch(c: dict):
    train = c.get("train") or {}
    if "per_device_train_batch_size" not in train:
        return None
    return train["per_device_train_batch_size"] * train.get("gradient_accumulation_steps", 1) * _processes(c)


def _lora(c: dict):
    lora = c.get("lora")
    return f"r={lora.get('r')}, α={lora.get('alpha')}" + (f", {lora['quantize']}" if lora.get("quantize", "none") != "none" else "") \
        if isinstance(lora, dict) else None


def _rewards(c: dict):
    terms = c.get("rewards")
    if not isinstance(terms, list):
        return None
    text = " + ".join(f"{t.get('weight', 1.0):g}×{t.get('name')}" for t in terms)
    return text + (f"; verified = {c['verified_reward']:g}" if c.get("verified_reward") not in (None, 1.0) else "") \
        + (f"; EOS penalty {c['eos_penalty']:g}" if c.get("eos_penalty") else "")


def _budget(c: dict):
    b = c.get("budget") or {}
    return f"{b['fraction']:.0%}" if b.get("fraction") else b.get("count")


def _precision(c: dict):
    """The precision trained in (the stage's `precision` metric) with the recipe's setting: `fp32 (auto)`."""
    asked, used = _get(c, "train.precision"), (c.get("_metrics") or {}).get("precision")
    return f"{used} ({asked})" if used and asked and used != asked else asked


# (row label, the value in a stage's resolved config: a dotted key or a function of the config; `_metrics`
# holds the stage's manifest metrics)
HYPERPARAMETERS = [
    ("selection method", "method"), ("selection budget", _budget),
    ("learning rate", "train.learning_rate"), ("LR schedule", "train.lr_scheduler_type"),
    ("warmup ratio", "train.warmup_ratio"), ("steps", _steps),
    ("batch per device", "train.per_device_train_batch_size"), ("grad. accumulation", "train.gradient_accumulation_steps"),
    ("processes", _processes), ("effective batch", _effective_batch),
    ("optimizer", "train.optim"), ("weight decay", "train.weight_decay"), ("max grad norm", "train.max_grad_norm"),
    ("precision", _precision), ("max length (tokens)", "max_length"), ("packing", "packing"), ("LoRA", _lora),
    ("loss only on assistant turns", "assistant_only_loss"),
    ("loss", "loss_type"), ("loss weights", "loss_weights"), ("β (DPO) / KL β (RLVR) / JSD β (distill)", "beta"),
    ("label smoothing", "label_smoothing"),
    ("samples per prompt", "num_samples"), ("generations per prompt", "num_generations"),
    ("temperature", "temperature"), ("top-p", "top_p"), ("max new tokens", "max_new_tokens"),
    ("max completion tokens", "max_completion_length"), ("prompts used", "limit"), ("clip ε", "epsilon"),
    ("reward scaling", "scale_rewards"), ("reward terms", _rewards), ("seed", lambda c: c["train"].get("seed") if "train" in c else c.get("seed")),
]
NOT_TRAINING = ("eval", "report")  # their settings are shown with the results


def stage_config(stage) -> dict | None:
    """The resolved config the runner wrote beside the stage's manifest, or None without one."""
    path = stage.dir / stage.manifest.get("config", "config.resolved.yaml")
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return None


def _cell(value) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def hyperparameter_section(stages: list) -> list[Block]:
    """A column per stage that trains, samples or selects; a row per hyperparameter any of them sets."""
    columns = []
    for stage in stages:
        config = stage_config(stage) if stage.manifest.get("kind") not in NOT_TRAINING else None
        if config is None:
            continue
        config["_metrics"] = stage.manifest.get("metrics") or {}
        values = {label: (get(config) if callable(get) else _get(config, get)) for label, get in HYPERPARAMETERS}
        if any(v is not None for label, v in values.items() if label != "seed"):
            columns.append((stage, values))
    if not columns:
        return []
    rows = [[label] + [_cell(v[label]) if v[label] is not None else "–" for _, v in columns]
            for label, _ in HYPERPARAMETERS if any(v[label] is not None for _, v in columns)]
    headers = ["hyperparameter"] + [s.name if s.name == s.manifest.get("kind") else f"{s.name} ({s.manifest.get('kind')})"
                                    for s, _ in columns]
    caption = ("Hyperparameters per stage, from each stage's resolved config (config.resolved.yaml beside its manifest). "
               "Batch sizes count sequences; in RLVR, completions (prompts × generations).")
    return [Heading("Hyperparameters"), Table(headers, rows, caption)]


def curves_section(stages: list, plots_dir: Path) -> list[Block]:
    figures = []
    for stage in stages:
        path = stage.dir / "metrics.jsonl"
        if stage.manifest.get("kind") == "eval" or not path.exists():
            continue
        kind = stage.manifest.get("kind")
        png = plots.training_curves(f"{stage.name} ({kind})", read_rows(path, on_bad_rows="skip"),
                                    plots_dir / f"curves_{stage.name}.png", kind)
        if png:
            figures.append(Figure(png, f"Training curves of stage '{stage.name}' from its metrics.jsonl"))
    return [Heading("Training curves")] + (figures or [Para("No stage logged training metrics.")])
