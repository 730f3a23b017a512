"""`posttrain config`: every stage's resolved config, each value with where it came from; a reference to
another stage's output is shown as written and with the path it resolves to in the run folder."""
import re
from pathlib import Path
from typing import Any

from posttrain import schema
from posttrain.recipe import StageSpec
from posttrain.stage import STAGES, is_ref, output_path, parse_ref


def config_sources(spec: StageSpec, overrides: list[str] = (), run_dir: Path | None = None,
                   kinds: dict[str, str] | None = None) -> list[tuple[str, Any, str]]:
    """(key, value, source) for every setting of a stage: `override` when a command-line override set it (or a
    block around it), `recipe` when the recipe file did, else `default`. With run_dir and the stages' kinds,
    a reference reads `${stages.X.output.Y} = <run_dir>/X/<Y's file>`."""
    overridden = [o.split("=", 1)[0].strip() for o in overrides]
    rows = []
    for key, value in schema.leaves(spec.config):
        dotted = f"stages.{spec.name}." + re.sub(r"\[(\d+)\]", r".\1", key)  # as overrides spell it: tasks.0.limit
        if any(dotted == o or dotted.startswith(o + ".") or o.startswith(dotted + ".") for o in overridden):
            source = "override"
        else:
            source = "recipe" if _lookup(spec.raw, key) else "default"
        rows.append((key, _as_written(value, run_dir, kinds or {}), source))
    return rows


def _as_written(value: Any, run_dir: Path | None, kinds: dict[str, str]) -> Any:
    """References back in the recipe's own syntax, ${stages.X.output.Y}, and where they point, in plain data."""
    if isinstance(value, list):
        return [_as_written(v, run_dir, kinds) for v in value]
    if isinstance(value, dict):
        return {k: _as_written(v, run_dir, kinds) for k, v in value.items()}
    if not is_ref(value):
        return value
    stage, output = parse_ref(value)
    written = "${stages.%s.output.%s}" % (stage, output)
    if run_dir is None or stage not in kinds:
        return written
    return f"{written} = {output_path(Path(run_dir) / stage, output, STAGES[kinds[stage]].outputs[output])}"


def _lookup(raw: Any, key: str) -> bool:
    """Whether the recipe's plain config holds `key` (dotted, with [i] for list items)."""
    node = raw
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        index = int(part[1:-1]) if part.startswith("[") else None
        if index is not None and isinstance(node, list) and index < len(node):
            node = node[index]
        elif index is None and isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True
