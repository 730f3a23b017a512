"""Validation across stages: a stage's max_length against the context of the model it trains, where that
is cheap to know (the built-in tiny model's architecture, a local folder's config.json, a GGUF file's header)."""
import json
from pathlib import Path

from posttrain import packaged
from posttrain.stage import is_ref, parse_ref


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
    if packaged.is_packaged(model):
        n = packaged.context_length(model)
        return (n, f"the header of {model}'s GGUF file") if n else None
    config = Path(model) / "config.json"
    try:
        n = json.loads(config.read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return (n, str(config)) if isinstance(n, int) else None


def _builtin_context(name: str, spec) -> tuple[int, str] | None:
    """The context of a model the stage builds from nothing (Stage.built_model), e.g. pretrain's builtin:tiny."""
    built = spec.stage.built_model(spec.config)
    return (built.context, f"stage '{name}' {built.how}") if built and built.context is not None else None


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


# ---------- tokenizer coverage ----------

COVERAGE_ROWS = 300  # the first rows of each local data file that validation tokenizes


def coverage_warnings(specs: dict) -> list[tuple[str, str]]:
    """(key, warning) for each local data file whose first rows hold characters the tokenizer of the stage's
    model maps to its unknown token: the model can neither learn nor write them. Only where the tokenizer is
    cheap to know: the built-in tiny model, or a local folder's tokenizer.json."""
    from posttrain.schema import leaves
    from posttrain.stage import Dataset

    found, seen = [], {}
    for name, spec in specs.items():
        model = getattr(spec.config, "model", None)
        unknown = _unknown_chars(model, specs) if isinstance(model, str) else None
        if unknown is None:
            continue
        for key, value in leaves(spec.config):
            if isinstance(value, Dataset) and (value, model) not in seen:
                seen[(value, model)] = _coverage(value, unknown)
                if seen[(value, model)]:
                    found.append((f"stages.{name}.{key}", seen[(value, model)]))
    return found


def _coverage(path: str, unknown) -> str | None:
    import itertools

    from posttrain.data import DataError, located_rows

    if not Path(path).is_file():
        return None  # another stage's output or a hub id: read only at run time
    try:
        rows = [row for _, row in itertools.islice(located_rows(path), COVERAGE_ROWS)]
    except DataError:
        return None  # the first-rows check reports it
    missing = [unknown(" ".join(_strings(row))) for row in rows]
    chars = sorted(set().union(*missing))
    if not chars:
        return None
    return (f"{sum(map(bool, missing))} of {len(rows)} rows checked in {path} contain characters the model's "
            f"tokenizer maps to its unknown token ({' '.join(map(repr, chars[:8]))}{' ...' if len(chars) > 8 else ''}); "
            "the model can neither learn nor write them")


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _unknown_chars(model: str, specs: dict, seen: frozenset = frozenset()):
    """A function text -> the set of its characters the model's tokenizer cannot represent, following model
    references upstream (a trained model keeps its tokenizer); None where that is not cheap to know."""
    if is_ref(model):
        stage = parse_ref(model)[0]
        spec = specs.get(stage)
        if spec is None or spec.config is None or stage in seen:
            return None
        if (built := spec.stage.built_model(spec.config)) is not None:  # e.g. pretrain's builtin:tiny
            return None if built.chars is None else lambda text: set(text) - built.chars
        upstream = getattr(spec.config, "model", None)
        return _unknown_chars(upstream, specs, seen | {stage}) if isinstance(upstream, str) else None
    return _folder_unknown_chars(Path(model))


def _folder_unknown_chars(folder: Path):
    """From a local folder's tokenizer.json and the unk_token of its tokenizer_config.json."""
    try:
        unk = json.loads((folder / "tokenizer_config.json").read_text()).get("unk_token")
        unk = unk.get("content") if isinstance(unk, dict) else unk
        if not isinstance(unk, str) or not (folder / "tokenizer.json").is_file():
            return None
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception:  # a folder or tokenizer this cannot read: no warning, the run loads it properly
        return None
    unk_id = tok.token_to_id(unk)
    if unk_id is None:
        return None

    def unknown(text: str) -> set[str]:
        enc = tok.encode(text, add_special_tokens=False)
        return {text[a:b] for i, (a, b) in zip(enc.ids, enc.offsets) if i == unk_id}

    return unknown
