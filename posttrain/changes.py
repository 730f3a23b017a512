"""What changed since a stage last ran, for `posttrain plan` and `run`: the config keys (with old and new
values), the upstream stages and the input files, read from the stage's manifest and config.resolved.yaml."""
from pathlib import Path

import yaml

VALUE_WIDTH = 40


def what_changed(manifest: dict, stage_dir: Path, config: dict, upstream: dict[str, str], inputs: dict[str, str]) -> str:
    """e.g. 'train.learning_rate 5e-05 → 0.0001; upstream sft changed'; a generic reason if nothing is known."""
    parts = []
    old_config = _old_config(stage_dir)
    if old_config is not None:
        parts += [f"{key} {_show(old)} → {_show(new)}" for key, old, new in _diff(old_config, config)]
    old_upstream = manifest.get("upstream", {})
    moved = [name for name, fp in upstream.items() if old_upstream.get(name) != fp]
    if moved:
        parts.append(f"upstream {', '.join(moved)} changed")
    old_inputs = manifest.get("inputs", {})
    edited = [path for path in [*inputs, *(p for p in old_inputs if p not in inputs)] if inputs.get(path) != old_inputs.get(path)]
    if edited:
        parts.append(f"input {', '.join(_short(p) for p in edited)} changed")
    return "; ".join(parts) or "config or inputs changed"


class _Missing:
    def __repr__(self) -> str:
        return "(unset)"


_MISSING = _Missing()


def _old_config(stage_dir: Path) -> dict | None:
    try:
        data = yaml.safe_load((stage_dir / "config.resolved.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(data, dict):
        return None
    return {k: v for k, v in data.items() if k not in ("kind", "fingerprint")}


def _diff(old, new, prefix: str = ""):
    """(dotted key, old, new) for every leaf that differs; mappings are compared key by key, lists whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*new, *(k for k in old if k not in new)]:
            yield from _diff(old.get(key, _MISSING), new.get(key, _MISSING), f"{prefix}{key}.")
    elif old != new:
        yield prefix[:-1], old, new


def _show(value) -> str:
    return _short(repr(value) if isinstance(value, (float, _Missing)) else str(value) if isinstance(value, str)
                  else yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n..."))


def _short(text: str) -> str:
    return text if len(text) <= VALUE_WIDTH else text[:VALUE_WIDTH - 1] + "…"
