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
from posttrain.yaml_reader import RecipeError, TooLarge, YamlLoader, line_map, parse

TOP_LEVEL_KEYS = {"name": "the recipe's name (the default run folder is runs/<name>)",
                  "description": "free text",
                  "vars": "free-form values for ${vars.X} interpolation",
                  "stages": "the named stages"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")  # \Z: `$` would let a name end in a newline
MAX_MESSAGE = 1000  # characters of one problem's message

def _shared_data(relative: str) -> str:
    return str(shared_data_dir() / relative)  # a missing file is reported by the dataset check, with its line


OmegaConf.register_resolver("shared_data", _shared_data, replace=True)


@dataclass
class StageSpec:
    name: str
    kind: str
    stage: Stage
    config: Any                     # the Config dataclass instance
    raw: dict                       # the resolved plain config (for config.resolved.yaml)
    deps: list[str] = field(default_factory=list)
    written: dict = field(default_factory=dict)  # the config as written, interpolations unresolved (${vars.seed})


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


class _Problems:
    def __init__(self, path: Path, lines: dict[str, int], overrides: list[str]):
        self.path, self.lines, self.items = path, lines, []
        self.overridden = {schema.key_path(o.split("=", 1)[0].strip()): o for o in overrides}

    def add(self, key: str, message: str) -> None:
        if len(message) > MAX_MESSAGE:  # a huge value is named, not echoed
            message = f"{message[:MAX_MESSAGE]}… (message cut at {MAX_MESSAGE} of {len(message):,} characters)"
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
        kind = "a directory" if path.is_dir() else "not a regular file (a device, a pipe or a socket)"
        raise RecipeError([f"{path}: {kind}; give a recipe YAML file" if path.exists() else f"{path}: no such recipe file"])
    data, root = parse(path)
    problems = _Problems(path, line_map(root), list(overrides))
    try:
        cfg = OmegaConf.create(data)
    except OmegaConfBaseException as e:  # e.g. a YAML date or binary value, which OmegaConf cannot hold
        problems.add(getattr(e, "full_key", "") or "", f"unsupported value: {str(e).splitlines()[0]}")
        raise RecipeError(problems.items) from None
    except RecursionError:
        raise RecipeError([f"{path}: nested too deeply to be a recipe"]) from None
    if not isinstance(cfg, DictConfig):
        raise RecipeError([f"{path}: a recipe is a mapping with 'name' and 'stages', got {type(cfg).__name__}"])
    override_warnings = _apply_overrides(cfg, overrides, problems)

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
        written = OmegaConf.to_container(stages_cfg[sname], resolve=False)
        specs[sname] = StageSpec(sname, kind, stage, config, raw, sorted(_refs(raw)), written)
    for key, message in check_max_length(specs):
        problems.add(key, message)
    for sname, spec in specs.items():  # inputs that only some upstream stage kinds can feed
        for key, message in spec.stage.check_upstream(spec.config, kinds) if spec.config is not None else []:
            problems.add(f"stages.{sname}.{key}", message)
    warnings = [] if problems.items else [problems.where(key, message)
                                          for key, message in override_warnings + coverage_warnings(specs)]
    order = _topological_order(specs, problems)
    if problems.items:
        raise RecipeError(problems.items)
    return Recipe(name, path, {n: specs[n] for n in order}, resolved, warnings, list(overrides))


def _apply_overrides(cfg: DictConfig, overrides, problems: "_Problems") -> list[tuple[str, str]]:
    """key=value, values parsed as YAML, replacing what was there (a whole block too, with a warning naming the
    recipe's keys it drops); list items by index (stages.eval.tasks.0.limit=20, tasks[0].limit=20, tasks.-1.limit=20).
    An override may add a stage only by giving it a kind: otherwise a stage name it names must exist (a typo).
    Returns the warnings (key, message)."""
    warnings = []
    stages = cfg.get("stages") if isinstance(cfg.get("stages"), DictConfig) else {}
    names = [str(n) for n in stages]
    added = {k.split(".")[1] for k, _, _ in (o.partition("=") for o in overrides)
             if re.fullmatch(r"\s*stages\.[^.]+\.kind\s*", k)}
    for item in overrides:
        key, sep, value = item.partition("=")
        key, shown = key.strip(), (f"{item[:80]}… ({len(item):,} characters)" if len(item) > 80 else item)
        if not sep or not key:
            problems.add("", f"override '{shown}' is not key=value")
            continue
        if problem := _index_problem(cfg, key):
            problems.add(key, problem)
            continue
        path = key.strip().split(".")
        if len(path) > 2 and path[0] == "stages" and path[1] not in names and path[1] not in added:
            problems.add(key.strip(), f"no stage '{path[1]}' in the recipe{schema.suggest(path[1], names)}; stages: "
                                      f"{', '.join(names)} (an override adds a stage only with stages.{path[1]}.kind)")
            continue
        try:
            parsed = yaml.load(value, Loader=YamlLoader) if value.strip() else ""
            dropped = _dropped_keys(cfg, key, parsed)
            OmegaConf.update(cfg, key, parsed, merge=False)
            if dropped:
                warnings.append((key, f"this override replaces the whole block: the recipe's {', '.join(dropped)} "
                                      f"no longer apply (their defaults do); set one key with {key}.KEY=VALUE"))
        except (OmegaConfBaseException, yaml.YAMLError, TooLarge, TypeError, ValueError, RecursionError) as e:
            problems.add(key, f"cannot apply override '{shown}': {str(e).splitlines()[0][:200]}")
    return warnings


def _dropped_keys(cfg: DictConfig, key: str, value) -> list[str]:
    """The keys of the recipe's block at `key` that a mapping override would drop (the block is replaced)."""
    if not isinstance(value, dict):
        return []
    try:
        node = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    except OmegaConfBaseException:
        return []
    return [str(k) for k in node.keys() if k not in value] if isinstance(node, DictConfig) else []


def _index_problem(cfg: DictConfig, key: str) -> str | None:
    """What is wrong with an override key's list indexes: a name where a list needs a number, a number past the
    end, or a number into a list the recipe does not have (OmegaConf would make it a mapping {0: ...})."""
    parts = re.findall(r"[^.\[\]]+", key)
    node, where = cfg, []
    for i, part in enumerate(parts):
        if isinstance(node, ListConfig):
            if not re.fullmatch(r"-?\d+", part) or not -len(node) <= int(part) < len(node):
                return (f"{'.'.join(where)} is a list of {len(node)} item(s): '{part:.40}' is not an index of it "
                        f"(0 to {len(node) - 1}, or -1 for the last)")
            node = node._get_node(int(part))
        elif isinstance(node, DictConfig):
            if part not in node:
                rest = parts[i + 1:]
                if rest and re.fullmatch(r"-?\d+", rest[0]):
                    whole = ".".join(where + [part])
                    return (f"{whole} is not in the recipe, so it has no item {rest[0]}: set the whole list, e.g. "
                            f"{whole}=[...]")
                return None
            node = node._get_node(part)
        else:
            return None
        where.append(part)
    return None


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
            problems.add(f"{spath}.kind", f"unknown stage kind {kind!r:.80}{schema.suggest(kind, STAGES)}; kinds: {', '.join(sorted(STAGES))}")
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


def _ref_key(value, stage: str, path: str = "") -> str | None:
    """The first key (dotted, [i] for list items) whose value references `stage`: the key that makes that edge."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for k, v in items:
        here = f"{path}[{k}]" if isinstance(value, list) else f"{path}.{k}" if path else str(k)
        if is_ref(v) and parse_ref(v)[0] == stage:
            return here
        if found := _ref_key(v, stage, here):
            return found
    return None


def _topological_order(specs: dict[str, StageSpec], problems: _Problems) -> list[str]:
    """Order stages by their references (recipe order breaks ties); report cycles."""
    order, state = [], {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = trail[trail.index(name):] + [name]
            edges = [f"stages.{a}.{_ref_key(specs[a].raw, b)} uses stage {b}" for a, b in zip(cycle, cycle[1:])]
            problems.add(f"stages.{name}", f"dependency cycle: {' -> '.join(cycle)} ({'; '.join(edges)})")
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

