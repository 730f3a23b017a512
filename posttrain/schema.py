"""Check plain recipe values against a stage's Config dataclass, collecting every problem.

Supported annotations: int, float, str, bool, Any, `X | None`, Literal[...], list[X], dict[str, X],
nested dataclasses, and the artifact types of posttrain.stage (Model, Dataset, Results, Report).
Range limits come from field metadata: ge, gt, le, lt.
"""
import copy
import dataclasses
import difflib
import math
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Union

from posttrain import packaged
from posttrain.stage import ARTIFACT_TYPES, Dataset, File, Model, is_ref, parse_ref

# (key path, message); the recipe loader adds file and line.
Problem = tuple[str, str]
# Looks up the type of a referenced output: (stage, output) -> artifact type, or an error message.
RefTypes = Callable[[str, str], "type | str"]
# Where a relative local path is read from: (key path, value) -> the path to use (the recipe loader makes it
# relative to the recipe's folder).
LocalPath = Callable[[str, str], str]

DATASET_SCHEMES = ("hf:", "builtin:")
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
FLOAT_MAX = sys.float_info.max  # a bigger int would overflow float()
NAME_MAX, PATH_MAX = 255, 4096  # Linux limits on one path component and a whole path, in bytes
UNRESOLVED = object()  # a value whose interpolation failed: already reported, not checked again


def suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp) -> str:
    if tp in ARTIFACT_TYPES.values():
        return tp.__name__.lower()
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def build(cls, data: Any, path: str, problems: list[Problem], ref_types: RefTypes, defaults: Any = None,
          local: LocalPath | None = None) -> Any:
    """Return an instance of dataclass `cls` from `data`, or None; every problem is appended. `defaults`: the
    instance whose values fill keys the recipe leaves out (a nested block's own default, e.g. DPO's
    TrainArgs(learning_rate=5e-7)), so a key's default never depends on whether its siblings are set."""
    if not isinstance(data, dict):
        problems.append((path, f"expected a mapping of {cls.__name__} keys, got {type(data).__name__}"))
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            problems.append((_join(path, key), f"unknown key '{key}'{suggest(key, fields)}; valid keys: {', '.join(fields)}"))
    values, ok = {}, True
    for name, f in fields.items():
        default = getattr(defaults, name) if defaults is not None else field_default(f)
        if name not in data:
            if default is dataclasses.MISSING:
                problems.append((_join(path, name), f"missing required key '{name}' ({_type_name(hints[name])})"))
                ok = False
            elif defaults is not None:
                values[name] = copy.deepcopy(default)
            continue
        before = len(problems)
        if dataclasses.is_dataclass(default) and isinstance(data[name], dict):  # a nested block: its own defaults
            value = build(type(default), data[name], _join(path, name), problems, ref_types, default, local)
        else:
            value = check_value(hints[name], data[name], _join(path, name), problems, ref_types, local)
        if len(problems) == before:
            _check_range(f, value, _join(path, name), problems)
        if isinstance(value, Model) and value.startswith("builtin:") and not f.metadata.get("builtin") \
                and not packaged.is_packaged(value):
            problems.append((_join(path, name), f"{value:.40} is built only by a pretrain stage; "
                                                "use its output here: ${stages.NAME.output.model}"))
        if value == [] and (default is dataclasses.MISSING or default) and not f.metadata.get("may_be_empty"):
            # a required list, or one whose default has items: empty would fail at run time, or silently do nothing
            problems.append((_join(path, name), "must not be empty" + (f" (default: {default!r:.80})" if default else "")))
        ok = ok and len(problems) == before
        values[name] = value
    return cls(**values) if ok else None


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (a fresh one from its factory), or MISSING for a required key."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_range(f: dataclasses.Field, value, path: str, problems: list[Problem]) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    limits = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
              "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}
    for key, (holds, sign) in limits.items():
        if key in f.metadata and not holds(value, f.metadata[key]):
            problems.append((path, f"{value} is out of range: must be {sign} {f.metadata[key]}"))


def check_value(tp, value: Any, path: str, problems: list[Problem], ref_types: RefTypes,
                local: LocalPath | None = None) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or value is UNRESOLVED:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        same_shape = [a for a in inner if _shape(a) == _shape(value)]
        if len(inner) == 1 or len(same_shape) == 1:  # the one alternative this value could be: its own errors
            return check_value((same_shape or inner)[0], value, path, problems, ref_types, local)
        for candidate in inner:  # first alternative that fits
            trial: list[Problem] = []
            result = check_value(candidate, value, path, trial, ref_types, local)
            if not trial:
                return result
        problems.append((path, f"expected one of {', '.join(_type_name(a) for a in inner)}, got {value!r:.80}"))
        return value
    if origin is Literal:
        if value not in args:
            problems.append((path, f"{value!r} is not one of {', '.join(map(repr, args))}{suggest(value, args)}"))
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append((path, f"expected a list, got {type(value).__name__}"))
            return value
        return [check_value(args[0], v, f"{path}[{i}]", problems, ref_types, local) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append((path, f"expected a mapping, got {type(value).__name__}"))
            return value
        return {k: check_value(args[1], v, _join(path, k), problems, ref_types, local) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, problems, ref_types, local=local)
    if tp in ARTIFACT_TYPES.values():
        return _check_artifact(tp, value, path, problems, ref_types, local)
    if tp is bool:
        if not isinstance(value, bool):
            problems.append((path, f"expected true or false, got {value!r:.80}"))
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append((path, f"expected an integer, got {value!r:.80}"))
        elif not INT64_MIN <= value <= INT64_MAX:  # torch and numpy could not hold it
            problems.append((path, f"{value:.3g} is too large for an integer setting"))
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append((path, f"expected a number, got {value!r:.80}"))
            return value
        if abs(value) > FLOAT_MAX or not math.isfinite(value):
            problems.append((path, f"expected a finite number, got {value!r:.80}"))
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append((path, f"expected a string, got {value!r:.80}"))
        return value
    raise TypeError(f"schema: unsupported annotation {tp!r} at {path}")


def _shape(tp_or_value) -> str:
    """list, mapping or scalar, for a type or for a value."""
    if isinstance(tp_or_value, list) or typing.get_origin(tp_or_value) is list:
        return "list"
    if isinstance(tp_or_value, dict) or typing.get_origin(tp_or_value) is dict or dataclasses.is_dataclass(tp_or_value):
        return "mapping"
    return "scalar"


def _check_artifact(tp, value, path: str, problems: list[Problem], ref_types: RefTypes, local: LocalPath | None):
    want = _type_name(tp)
    if not isinstance(value, str):
        problems.append((path, f"expected a {want} (a path, an id or ${{stages.NAME.output.KEY}}), got {value!r:.80}"))
        return value
    if is_ref(value):
        stage, output = parse_ref(value)
        got = ref_types(stage, output)
        if isinstance(got, str):
            problems.append((path, got))
        elif got is not tp:
            problems.append((path, f"stage '{stage}' output '{output}' is a {_type_name(got)}, but a {want} is needed here"))
        return tp(value)
    if not value.strip():
        problems.append((path, f"empty {want}: give a path, an id or ${{stages.NAME.output.KEY}}"))
        return tp(value)
    if problem := path_problem(value):
        problems.append((path, problem))
        return tp(value)
    if tp is Model and packaged.is_packaged(value):
        return tp(_check_packaged(value, path, problems, local))
    if is_local(tp, value):
        given = value
        if local and not Path(value).is_absolute():
            value = local(path, value)
        found = Path(value).is_file() if tp is File else Path(value).exists()
        if not found:
            what = {Dataset: "data file", File: "file"}.get(tp, "model folder")
            read_as = f" (read as {value:.200})" if value != given else ""
            problems.append((path, f"{what} not found: {given:.200}{read_as}"))
    elif tp is Model and "@" in value and not all(value.rpartition("@")[::2]):
        problems.append((path, f"{value:.200}: a hub model with a revision is org/name@revision (a branch, tag or commit)"))
    elif tp is Dataset and value.startswith("hf:") and "@" in value.split(":")[1] \
            and not all(value.split(":")[1].rpartition("@")[::2]):
        problems.append((path, f"{value:.200}: a hub dataset with a revision is hf:org/name@revision[:config][:split]"))
    return tp(value)


def _check_packaged(value: str, path: str, problems: list[Problem], local: LocalPath | None) -> str:
    """A model converted from a GGUF file (posttrain/packaged.py): the file and the gguf package must be here.
    A relative `gguf:PATH` is read from the recipe's folder, like every local path."""
    gguf_path = value[len(packaged.GGUF_PREFIX):]
    if value.startswith(packaged.GGUF_PREFIX) and local and gguf_path and not Path(gguf_path).expanduser().is_absolute():
        value = local(path, gguf_path, prefix=packaged.GGUF_PREFIX)
    problems.extend((path, p) for p in packaged.problems(value))
    return value


def is_local(tp, value: str) -> bool:
    """A value that names a local file or folder: any dataset but a hub id or built-in, any file, and a model
    given as a path (starting with . or /; `org/name` is a hub id)."""
    if tp is Dataset:
        return not value.startswith(DATASET_SCHEMES)
    if tp is File:
        return True
    return tp is Model and value.startswith((".", "/"))


def key_path(dotted: str) -> str:
    """An override's key as problems name it: list indexes in brackets (a.0.b -> a[0].b)."""
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", dotted)


class LocalPaths:
    """Relative local paths in a recipe are read from the recipe's folder, so a recipe runs the same from any
    working directory; one given in a command-line override is read from the working directory, as the shell
    that typed it would. Remembers each rewrite so the stage's plain config (what is hashed) says it too."""

    def __init__(self, recipe: Path, overridden):
        self.base = recipe.absolute().parent
        self.overridden = [key_path(k) for k in overridden]
        self.done: dict[str, str] = {}

    def __call__(self, key: str, value: str, prefix: str = "") -> str:
        by_override = any(key == k or key.startswith((k + ".", k + "[")) for k in self.overridden)
        self.done[key] = prefix + os.path.normpath((Path.cwd() if by_override else self.base) / value)
        return self.done[key]

    def rewrite(self, raw: dict, spath: str) -> None:
        """Put the paths rewritten while building stage `spath` into its plain config."""
        for key, value in self.done.items():
            *parents, last = [int(i) if i.isdigit() else i for i in re.findall(r"[^.\[\]]+", key[len(spath) + 1:])]
            node = raw
            for p in parents:
                node = node[p]
            node[last] = value
        self.done.clear()


def path_problem(value: str) -> str | None:
    """A path no file system accepts, described without echoing it (it may be megabytes long)."""
    longest = max(len(part.encode()) for part in Path(value).parts) if Path(value).parts else 0
    if longest > NAME_MAX:
        return f"a path component is {longest:,} bytes long; file systems allow at most {NAME_MAX}"
    if len(value.encode()) > PATH_MAX:
        return f"the path is {len(value.encode()):,} bytes long; at most {PATH_MAX} are allowed"
    return None


def leaves(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) for every setting of a built Config: nested dataclasses (and lists of them) are
    walked, anything else (a number, a list of names, a free-form mapping) is one value."""
    if dataclasses.is_dataclass(value):
        return [leaf for f in dataclasses.fields(value) for leaf in leaves(getattr(value, f.name), _join(prefix, f.name))]
    if isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
        return [leaf for i, v in enumerate(value) for leaf in leaves(v, f"{prefix}[{i}]")]
    return [(prefix, value)]


def describe(cls, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every key of a Config dataclass, nested ones dotted. `defaults`: as in build."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        value = getattr(defaults, f.name) if defaults is not None else field_default(f)
        default = "required" if value is dataclasses.MISSING else "" if dataclasses.is_dataclass(value) else repr(value)
        nested, in_list = _nested_dataclass(tp)
        if nested is not None:
            rows.append((key, _annotation(tp), default if default == "required" else "", f.metadata.get("help", "")))
            rows += describe(nested, key + ("[]." if in_list else "."), value if dataclasses.is_dataclass(value) else None)
            continue
        limits = " ".join(f"{k} {f.metadata[k]}" for k in ("ge", "gt", "le", "lt") if k in f.metadata)
        help_text = f.metadata.get("help", "") + (f" ({limits})" if limits else "")
        rows.append((key, _annotation(tp), default, help_text))
    return rows


def _nested_dataclass(tp) -> tuple[type | None, bool]:
    """The dataclass inside `X`, `X | None`, `list[X]` or `Y | list[X]`, if any (its keys are documented too),
    and whether it is in a list."""
    if dataclasses.is_dataclass(tp):
        return tp, False
    if typing.get_origin(tp) is list:
        return (typing.get_args(tp)[0], True) if dataclasses.is_dataclass(typing.get_args(tp)[0]) else (None, False)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return next((found for a in typing.get_args(tp) if (found := _nested_dataclass(a))[0]), (None, False))
    return None, False


def _annotation(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _annotation(a) for a in args)
    if origin is list:
        return f"list[{_annotation(args[0])}]"
    if origin is dict:
        return f"mapping[{_annotation(args[1])}]"
    if dataclasses.is_dataclass(tp):
        return tp.__name__
    return _type_name(tp) if tp is not Any else "any"
