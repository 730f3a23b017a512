"""Recipe YAML -> validated stage graph. Every problem is collected and reported at once, with the
file, the key path and the line."""
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import posttrain.stages  # noqa: F401  (registers the stage kinds)
from posttrain import schema
from posttrain.data import DataError, shared_data_dir
from posttrain.model_context import check_max_length, coverage_warnings
from posttrain.stage import STAGES, Stage, is_ref, make_ref, parse_ref

TOP_LEVEL_KEYS = {"name": "the recipe's name (the default run folder is runs/<name>)",
                  "description": "free text",
                  "vars": "free-form values for ${vars.X} interpolation",
                  "stages": "the named stages"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_RECIPE_VALUES = 100_000  # far beyond any real recipe; guards against YAML alias bombs

class YamlLoader(yaml.SafeLoader):
    """PyYAML resolves YAML 1.1, where 1e-3 and 1.0e3 are strings; YAML 1.2 reads every such form as a number."""


YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$"), list("-+.0123456789"))
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?0o[0-7]+$"), list("-+0"))


def _shared_data(relative: str) -> str:
    return str(shared_data_dir() / relative)  # a missing file is reported by the dataset check, with its line


OmegaConf.register_resolver("shared_data", _shared_data, replace=True)


class RecipeError(Exception):
    """A recipe with problems. str() lists every one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the recipe:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class StageSpec:
    name: str
    kind: str
    stage: Stage
    config: Any                     # the Config dataclass instance
    raw: dict                       # the resolved plain config (for config.resolved.yaml)
    deps: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    name: str
    path: Path
    stages: dict[str, StageSpec]    # in run order
    resolved: dict
    warnings: list[str] = field(default_factory=list)  # file:line: key: what may surprise at run time
    overrides: list[str] = field(default_factory=list)  # the key=value overrides applied, as given

    @property
    def hash(self) -> str:
        return canonical_hash(self.resolved)

    def downstream(self, name: str) -> list[str]:
        """`name` and every stage that depends on it, in run order."""
        hit = {name}
        for spec in self.stages.values():
            if any(d in hit for d in spec.deps):
                hit.add(spec.name)
        return [n for n in self.stages if n in hit]

    def upstream(self, name: str) -> list[str]:
        """Every stage `name` depends on, directly or not, in run order."""
        return [n for n in self.stages if n != name and name in self.downstream(n)]


def canonical_hash(obj: Any) -> str:
    """Key order and formatting never change the hash."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _line_map(root: yaml.Node | None) -> dict[str, int]:
    """Key path -> 1-based line of that key in the YAML text."""
    lines: dict[str, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                p = f"{path}.{key.value}" if path else str(key.value)
                lines[p] = key.start_mark.line + 1
                walk(value, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                p = f"{path}[{i}]"
                lines[p] = item.start_mark.line + 1
                walk(item, p)

    walk(root, "")
    return lines


def _parse(path: Path) -> tuple[Any, yaml.Node | None]:
    """The recipe's data and its YAML node graph, or a RecipeError for anything that is not a sane YAML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError([f"{path}: cannot read the recipe: {e}"]) from None
    try:
        root = yaml.compose(text, Loader=YamlLoader)
        data = yaml.load(text, Loader=YamlLoader) if text.strip() else {}
        size, duplicates = _expanded_size(root), _duplicate_keys(root)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        hint = (" (an interpolation inside [...] or {...} must be quoted: '${...}')"
                if "${" in line and ("[" in line or "{" in line.replace("${", "")) else "")
        raise RecipeError([f"{path}:{mark.line + 1 if mark else '?'}: not valid YAML: {getattr(e, 'problem', e)}{hint}"]) from None
    except RecursionError:
        raise RecipeError([f"{path}: nested too deeply to be a recipe"]) from None
    if size > MAX_RECIPE_VALUES:
        raise RecipeError([f"{path}: YAML aliases expand this recipe to {size:,} values (limit {MAX_RECIPE_VALUES:,})"])
    if duplicates:
        raise RecipeError([f"{path}:{line}: duplicate key '{key}' (YAML would silently keep only the last one)"
                           for key, line in duplicates])
    return data, root


def _expanded_size(root: yaml.Node | None) -> int:
    """How many values the node graph expands to; aliases make a short text exponentially large."""
    sizes: dict[int, int] = {}

    def size(node) -> int:
        if id(node) not in sizes:
            children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
                node.value if isinstance(node, yaml.SequenceNode) else []
            sizes[id(node)] = 1 + sum(size(c) for c in children)  # computed once per node, however often aliased
        return sizes[id(node)]

    return size(root) if root is not None else 0


def _duplicate_keys(root: yaml.Node | None) -> list[tuple[str, int]]:
    found, seen_nodes = [], set()

    def walk(node):
        if id(node) in seen_nodes:
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
            found.extend((k.value, k.start_mark.line + 1) for i, (k, _) in enumerate(node.value)
                         if isinstance(k, yaml.ScalarNode) and k.value in keys[:i] and k.value != "<<")
            for pair in node.value:
                for n in pair:
                    walk(n)
        elif isinstance(node, yaml.SequenceNode):
            for n in node.value:
                walk(n)

    walk(root)
    return found


class _Problems:
    def __init__(self, path: Path, lines: dict[str, int], overrides: list[str]):
        self.path, self.lines, self.items = path, lines, []
        self.overridden = {schema.key_path(o.split("=", 1)[0].strip()): o for o in overrides}

    def add(self, key: str, message: str) -> None:
        self.items.append(self.where(key, message))

    def where(self, key: str, message: str) -> str:
        """`message` prefixed with the file, the line of `key` (or its nearest enclosing key) and `key`."""
        where = str(self.path)
        probe = key
        while probe and probe not in self.lines:  # nearest enclosing key that has a line
            probe = probe.rsplit(".", 1)[0] if "." in probe else ""
        if probe:
            where += f":{self.lines[probe]}"
        origin = next((f" (from override '{o:.80}')" for k, o in self.overridden.items() if key.startswith(k)), "")
        return f"{where}: {key}: {message}{origin}" if key else f"{where}: {message}"


def load(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Load, resolve and validate a recipe. Raises RecipeError listing every problem."""
    path = Path(path)
    try:
        found = path.is_file()
    except OSError as e:  # e.g. a name too long for the filesystem: say so without echoing all of it
        raise RecipeError([f"{str(path)[:80]}…: cannot be read as a recipe file ({e.strerror})"]) from None
    if not found:
        raise RecipeError([f"{path}: no such recipe file"])
    data, root = _parse(path)
    problems = _Problems(path, _line_map(root), list(overrides))
    try:
        cfg = OmegaConf.create(data)
    except OmegaConfBaseException as e:  # e.g. a YAML date or binary value, which OmegaConf cannot hold
        problems.add(getattr(e, "full_key", "") or "", f"unsupported value: {str(e).splitlines()[0]}")
        raise RecipeError(problems.items) from None
    except RecursionError:
        raise RecipeError([f"{path}: nested too deeply to be a recipe"]) from None
    if not isinstance(cfg, DictConfig):
        raise RecipeError([f"{path}: a recipe is a mapping with 'name' and 'stages', got {type(cfg).__name__}"])
    _apply_overrides(cfg, overrides, problems)

    for key in cfg:
        if key not in TOP_LEVEL_KEYS:
            problems.add(str(key), f"unknown top-level key{schema.suggest(key, TOP_LEVEL_KEYS)}; valid: {', '.join(TOP_LEVEL_KEYS)}")
    name = cfg.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.add("name", "the recipe needs a 'name' made of letters, digits, '_', '-' and '.'")
    elif len(name) > schema.NAME_MAX:  # it becomes the run folder's name
        problems.add("name", f"the name is {len(name):,} characters; at most {schema.NAME_MAX} (it names the run folder)")
    stages_cfg = cfg.get("stages")
    if not isinstance(stages_cfg, DictConfig) or not stages_cfg:
        problems.add("stages", "the recipe needs a non-empty 'stages' mapping of stage name -> stage config")
        raise RecipeError(problems.items)

    kinds = _inject_outputs(stages_cfg, problems)
    resolved = _resolve(cfg, problems, kinds)

    def ref_types(stage: str, output: str):
        if stage not in kinds:
            return f"stage '{stage}' does not exist{schema.suggest(stage, kinds)}"
        outputs = STAGES[kinds[stage]].outputs
        if output not in outputs:  # e.g. `${stages.X.output.model}0`, which OmegaConf resolves to a string
            return f"stage '{stage}' has no output '{output}'{schema.suggest(output, outputs)}; its outputs: {', '.join(outputs)}"
        return outputs[output]

    local = schema.LocalPaths(path, problems.overridden)
    specs: dict[str, StageSpec] = {}
    for sname, kind in kinds.items():
        raw = {k: v for k, v in resolved["stages"][sname].items() if k not in ("kind", "output")}
        stage = STAGES[kind]()
        spath = f"stages.{sname}"
        found: list[schema.Problem] = []
        config = schema.build(stage.Config, raw, spath, found, ref_types, local=local)
        local.rewrite(raw, spath)
        if _unresolved(raw):  # reported where it failed; the stage's own checks would trip over it
            config = None
        if config is not None:
            found += [(f"{spath}.{k}" if k else spath, m) for k, m in stage.check(config)]
        for key, message in found:
            problems.add(key, message)
        specs[sname] = StageSpec(sname, kind, stage, config, raw, sorted(_refs(raw)))
    for key, message in check_max_length(specs):
        problems.add(key, message)
    for sname, spec in specs.items():  # inputs that only some upstream stage kinds can feed
        for key, message in spec.stage.check_upstream(spec.config, kinds) if spec.config is not None else []:
            problems.add(f"stages.{sname}.{key}", message)
    warnings = [] if problems.items else [problems.where(key, message) for key, message in coverage_warnings(specs)]
    order = _topological_order(specs, problems)
    if problems.items:
        raise RecipeError(problems.items)
    return Recipe(name, path, {n: specs[n] for n in order}, resolved, warnings, list(overrides))


def _apply_overrides(cfg: DictConfig, overrides, problems: "_Problems") -> None:
    """key=value, values parsed as YAML, replacing what was there; list items by index (stages.eval.tasks.0.limit=20).
    An override may add a stage only by giving it a kind: otherwise a stage name it names must exist (a typo)."""
    stages = cfg.get("stages") if isinstance(cfg.get("stages"), DictConfig) else {}
    names = [str(n) for n in stages]
    added = {k.split(".")[1] for k, _, _ in (o.partition("=") for o in overrides)
             if re.fullmatch(r"\s*stages\.[^.]+\.kind\s*", k)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.add("", f"override '{item}' is not key=value")
            continue
        path = key.strip().split(".")
        if len(path) > 2 and path[0] == "stages" and path[1] not in names and path[1] not in added:
            problems.add(key.strip(), f"no stage '{path[1]}' in the recipe{schema.suggest(path[1], names)}; stages: "
                                      f"{', '.join(names)} (an override adds a stage only with stages.{path[1]}.kind)")
            continue
        try:
            OmegaConf.update(cfg, key.strip(), yaml.load(value, Loader=YamlLoader) if value.strip() else "", merge=False)
        except (OmegaConfBaseException, yaml.YAMLError) as e:
            problems.add(key.strip(), f"cannot apply override '{item}': {str(e).splitlines()[0]}")


def _inject_outputs(stages_cfg: DictConfig, problems: _Problems) -> dict[str, str]:
    """Give each stage an `output` node, so `${stages.X.output.Y}` resolves to a typed reference."""
    kinds = {}
    for sname, scfg in stages_cfg.items():
        spath = f"stages.{sname}"
        if not NAME_RE.match(str(sname)) or len(str(sname)) > schema.NAME_MAX:
            problems.add(f"stages.{str(sname):.40}", f"stage names are at most {schema.NAME_MAX} letters, digits, '_', "
                                                    "'-' and '.' (they become folder names)")
            continue
        if not isinstance(scfg, DictConfig):
            problems.add(spath, f"a stage is a mapping with a 'kind', got {type(scfg).__name__}")
            continue
        if "output" in scfg:
            problems.add(f"{spath}.output", "'output' is reserved: it names the stage's outputs for references")
        try:
            kind = scfg.get("kind")
        except OmegaConfBaseException:  # a broken interpolation: reported when the leaves are resolved
            continue
        if not isinstance(kind, str) or kind not in STAGES:
            problems.add(f"{spath}.kind", f"unknown stage kind {kind!r}{schema.suggest(kind, STAGES)}; kinds: {', '.join(sorted(STAGES))}")
            continue
        kinds[str(sname)] = kind
        scfg["output"] = {out: make_ref(str(sname), out) for out in STAGES[kind].outputs}
    return kinds


def _resolve(cfg: DictConfig, problems: _Problems, kinds: dict[str, str]) -> dict:
    """Resolve interpolations leaf by leaf, so every broken one is reported, not just the first."""

    def walk(node, path):
        # by index for lists: iterating a ListConfig resolves its items, and a broken one would raise here
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else ((i, None) for i in range(len(node)))
        out = {} if isinstance(node, DictConfig) else []
        for key, _ in list(items):
            p = f"{path}.{key}" if isinstance(node, DictConfig) and path else (str(key) if not path else f"{path}[{key}]")
            try:
                value = node[key]
            except OmegaConfBaseException as e:
                problems.add(p, _explain_interpolation(e, kinds))
                value = schema.UNRESOLVED
            if isinstance(value, (DictConfig, ListConfig)):
                value = walk(value, p)
            if isinstance(out, dict):
                out[str(key)] = value
            else:
                out.append(value)
        return out

    return walk(cfg, "")


def _explain_interpolation(e: Exception, kinds: dict[str, str]) -> str:
    msg = str(e).splitlines()[0]
    data_error = f"{DataError.__name__} raised while resolving interpolation: "
    if msg.startswith(data_error):  # ${shared_data:...} without the shared folder: its own message
        return msg[len(data_error):]
    m = re.search(r"stages\.([^.}\s']+)\.output\.([^.}\s']+)", msg)
    if m and m.group(1) not in kinds:
        return f"references stage '{m.group(1)}', which does not exist{schema.suggest(m.group(1), kinds)}"
    if m:
        outputs = STAGES[kinds[m.group(1)]].outputs
        return (f"stage '{m.group(1)}' ({kinds[m.group(1)]}) has no output '{m.group(2)}'"
                f"{schema.suggest(m.group(2), outputs)}; its outputs: {', '.join(outputs)}")
    return f"cannot resolve interpolation: {msg}"


def _unresolved(value) -> bool:
    if isinstance(value, dict):
        return any(map(_unresolved, value.values()))
    return any(map(_unresolved, value)) if isinstance(value, list) else value is schema.UNRESOLVED


def _refs(value) -> set[str]:
    if isinstance(value, dict):
        return set().union(*map(_refs, value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*map(_refs, value)) if value else set()
    return {parse_ref(value)[0]} if is_ref(value) else set()


def _topological_order(specs: dict[str, StageSpec], problems: _Problems) -> list[str]:
    """Order stages by their references (recipe order breaks ties); report cycles."""
    order, state = [], {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = trail[trail.index(name):] + [name]
            problems.add(f"stages.{name}", f"dependency cycle: {' -> '.join(cycle)}")
            return
        state[name] = "active"
        for dep in specs[name].deps:
            if dep in specs:
                visit(dep, trail + [name])
        state[name] = "done"
        order.append(name)

    for name in specs:
        visit(name, [])
    return order


def resolved_stage_config(spec: StageSpec) -> dict:
    """The validated config with defaults filled in, as plain data (saved next to every artifact)."""
    return json.loads(json.dumps(dataclasses.asdict(spec.config)))  # artifact str subclasses -> plain str

