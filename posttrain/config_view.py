"""`posttrain config`: every stage's resolved config, each value with where it came from; a reference to
another stage's output is shown as written and with the path it resolves to in the run folder."""
import re
from pathlib import Path
from typing import Any

import yaml

from posttrain import schema
from posttrain.recipe import StageSpec
from posttrain.stage import STAGES, is_ref, output_path, parse_ref


def config_sources(spec: StageSpec, overrides: list[str] = (), run_dir: Path | None = None,
                   kinds: dict[str, str] | None = None) -> list[tuple[str, Any, str]]:
    """(key, value, source) for every setting of a stage: `override` when a command-line override set it (the key,
    or a block whose new value holds it: a block override replaces the recipe's block, so its other keys are
    defaults) or set the `vars` value it interpolates; `recipe` when the recipe file did; else `default`, or
    `default, TRL: X` where TRL 1.16's default differs (posttrain/trl_defaults.py says why). With run_dir and the
    stages' kinds, a reference reads `${stages.X.output.Y} = <run_dir>/X/<Y's file>`."""
    from posttrain.trl_defaults import trl_default

    overridden = _overridden_keys(spec, overrides)
    rows = []
    for key, value in schema.leaves(spec.config):
        dotted = f"stages.{spec.name}." + re.sub(r"\[(\d+)\]", r".\1", key)  # as overrides spell it: tasks.0.limit
        if any(dotted == o or dotted.startswith(o + ".") or o.startswith(dotted + ".") for o in overridden) \
                or _set_through_vars(_find(spec.written, key)[1], overridden):
            source = "override"
        elif _find(spec.raw, key)[0]:
            source = "recipe"
        else:
            trl = trl_default(spec.kind, key)
            source = f"default, TRL: {trl[0]!r}" if trl else "default"
        rows.append((key, _as_written(value, run_dir, kinds or {}), source))
    return rows


def _overridden_keys(spec: StageSpec, overrides: list[str]) -> list[str]:
    """The dotted keys the overrides set, list indexes as `.i` (tasks[0] and tasks.-1 as tasks.0, tasks.N-1); a
    block set to a mapping sets the keys in that mapping, not the whole block."""
    from posttrain.yaml_reader import YamlLoader

    keys = []
    for item in overrides:
        key, _, text = item.partition("=")
        key = re.sub(r"\[(-?\d+)\]", r".\1", key.strip())
        prefix = f"stages.{spec.name}."
        if key.startswith(prefix):  # a negative index counts from the end of the list the recipe has
            parts, node = key[len(prefix):].split("."), spec.raw
            for i, part in enumerate(parts):
                if isinstance(node, list) and re.fullmatch(r"-\d+", part) and -len(node) <= int(part):
                    parts[i] = str(len(node) + int(part))
                found, node = _find(node, parts[i]) if isinstance(node, (dict, list)) else (False, None)
                if not found:
                    break
            key = prefix + ".".join(parts)
        try:
            value = yaml.load(text, Loader=YamlLoader)
        except (yaml.YAMLError, ValueError, RecursionError):
            value = None
        keys += [f"{key}.{leaf}" for leaf in _leaf_keys(value)] if isinstance(value, dict) and value else [key]
    return keys


def _leaf_keys(value: dict, prefix: str = "") -> list[str]:
    return [k for name, v in value.items() for k in
            (_leaf_keys(v, f"{prefix}{name}.") if isinstance(v, dict) and v else [f"{prefix}{name}"])]


def _set_through_vars(written: Any, overridden: list[str]) -> bool:
    """Whether a value as the recipe wrote it interpolates a `vars` value an override set (${vars.seed})."""
    used = re.findall(r"\$\{vars\.([^}]+)\}", written) if isinstance(written, str) else []
    names = [o[len("vars."):] for o in overridden if o.startswith("vars.")] + (["" ] if "vars" in overridden else [])
    return any(not n or u == n or u.startswith(n + ".") or n.startswith(u + ".") for u in used for n in names)


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


def _find(raw: Any, key: str) -> tuple[bool, Any]:
    """Whether the plain config holds `key` (dotted, with [i] or .i for list items), and its value there."""
    node = raw
    for part in re.findall(r"[^.\[\]]+", key):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False, None
    return True, node
