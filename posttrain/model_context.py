"""Validation across stages: a stage's max_length against the context of the model it trains, where that
is cheap to know (the built-in tiny model's architecture, or a local folder's config.json)."""
import json
from pathlib import Path

from posttrain.stage import is_ref, parse_ref
from posttrain.stages.pretrain import BUILTIN


def model_context(model: str, specs: dict, seen: frozenset = frozenset()) -> tuple[int, str] | None:
    """(max_position_embeddings, where it comes from) of a model input, following references upstream:
    a stage that outputs a model trains the model it was given, so it keeps that model's context."""
    if is_ref(model):
        stage = parse_ref(model)[0]
        spec = specs.get(stage)
        if spec is None or spec.config is None or stage in seen:
            return None
        upstream = getattr(spec.config, "model", None)
        return _builtin_context(stage, spec) or (
            model_context(upstream, specs, seen | {stage}) if isinstance(upstream, str) else None)
    config = Path(model) / "config.json"
    try:
        n = json.loads(config.read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return (n, str(config)) if isinstance(n, int) else None


def _builtin_context(name: str, spec) -> tuple[int, str] | None:
    """The context of the model a pretrain stage builds from builtin:tiny, with its architecture overrides."""
    if spec.kind != "pretrain" or spec.config.model != BUILTIN:
        return None
    from posttrain.worlds.tinyworld import DEFAULT_ARCH

    n = {**DEFAULT_ARCH, **spec.config.architecture}["max_position_embeddings"]
    return (n, f"stage '{name}' builds {BUILTIN}") if isinstance(n, int) else None


def check_max_length(specs: dict) -> list[tuple[str, str]]:
    """(key, message) for each stage whose max_length exceeds its model's context."""
    problems = []
    for name, spec in specs.items():
        cfg = spec.config
        length, model = getattr(cfg, "max_length", None), getattr(cfg, "model", None)
        if not isinstance(length, int) or not isinstance(model, str):
            continue
        found = _builtin_context(name, spec) or model_context(model, specs)
        if found and length > found[0]:
            problems.append((f"stages.{name}.max_length", f"{length} exceeds the model's context of {found[0]} tokens "
                                                          f"(max_position_embeddings; {found[1]}): lower max_length"))
    return problems
