"""Reading a recipe's YAML text: YAML 1.2 (the core schema), read once, with its size, aliases, duplicate keys and
the line of every key checked; anything that is not a sane YAML mapping is a RecipeError naming the file and line."""
import re
from pathlib import Path
from typing import Any

import yaml

MAX_RECIPE_VALUES = 100_000  # far beyond any real recipe; guards against YAML alias bombs and huge documents


class RecipeError(Exception):
    """A recipe with problems. str() lists every one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the recipe:\n" + "\n".join(f"  - {p}" for p in problems))



class YamlLoader(yaml.SafeLoader):
    """Recipes are YAML 1.2 (its core schema), not PyYAML's YAML 1.1: only true/false are booleans (on, off, yes, no
    are strings, as keys too), 010 is ten (not eight), 1:30 and 1_000 are strings (not 90 and 1000), 1e-3 is a
    number, dates are strings. Counts nodes as it composes, so a huge document is refused without being read whole."""

    nodes = 0

    def compose_node(self, parent, index):
        self.nodes += 1
        if self.nodes > MAX_RECIPE_VALUES:
            raise TooLarge(f"more than {MAX_RECIPE_VALUES:,} values (at line {self.peek_event().start_mark.line + 1})")
        return super().compose_node(parent, index)

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        digits = text.lstrip("+-")
        if len(digits) > MAX_INT_DIGITS:  # Python refuses to convert such a string, with a bare ValueError
            raise yaml.constructor.ConstructorError(None, None, f"an integer of {len(digits):,} digits", node.start_mark)
        base = 8 if digits.startswith("0o") else 16 if digits.startswith("0x") else 10
        try:
            value = int(digits[2:] if base != 10 else digits, base)
        except ValueError:
            raise yaml.constructor.ConstructorError(None, None, f"{text[:80]!r} is not an integer", node.start_mark) from None
        return -value if text.startswith("-") else value


class TooLarge(Exception):
    pass


MAX_INT_DIGITS = 4000  # below Python's 4,300-digit limit on int(str)
YamlLoader.yaml_implicit_resolvers = {}  # the YAML 1.2 core schema's, instead of the inherited YAML 1.1 ones
for tag, pattern, first in [
        ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
        ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
        ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
        ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
         list("-+.0123456789")),
        ("merge", r"^(?:<<)$", ["<"])]:
    YamlLoader.add_implicit_resolver(f"tag:yaml.org,2002:{tag}", re.compile(pattern), first)
YamlLoader.add_constructor("tag:yaml.org,2002:int", YamlLoader.construct_yaml_int)


def line_map(root: yaml.Node | None) -> dict[str, int]:
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


def parse(path: Path) -> tuple[Any, yaml.Node | None]:
    """The recipe's data and its YAML node graph, or a RecipeError for anything that is not a sane YAML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError([f"{path}: cannot read the recipe: {e}"]) from None
    try:
        return _compose_and_construct(path, text)
    except yaml.YAMLError as e:
        raise RecipeError([_yaml_problem(path, text, e)]) from None
    except RecursionError:
        raise RecipeError([f"{path}: nested too deeply to be a recipe"]) from None
    except TooLarge as e:
        raise RecipeError([f"{path}: too large to be a recipe: {e}"]) from None


def _compose_and_construct(path: Path, text: str) -> tuple[Any, yaml.Node | None]:
    """Read once: compose the node graph (counting nodes), check it, then build the data from those nodes."""
    loader = YamlLoader(text)
    try:
        root = loader.get_single_node()
        size, duplicates = _expanded_size(root), _duplicate_keys(root)
        if size > MAX_RECIPE_VALUES:
            raise RecipeError([f"{path}: YAML aliases expand this recipe to {size:,} values (limit {MAX_RECIPE_VALUES:,})"])
        if duplicates:
            raise RecipeError([f"{path}:{line}: duplicate key '{key}' (YAML would silently keep only the last one)"
                               for key, line in duplicates])
        return (loader.construct_document(root) if root is not None else {}), root
    finally:
        loader.dispose()


def _yaml_problem(path: Path, text: str, e: yaml.YAMLError) -> str:
    """file:line: what is wrong; the line from the error's mark, or from the position of a bad character."""
    mark = getattr(e, "problem_mark", None)
    if mark is not None:
        number = mark.line + 1
    elif isinstance(getattr(e, "position", None), int):  # a reader error (a NUL or other unprintable character)
        number = text.count("\n", 0, e.position) + 1
    else:
        number = "?"
    line = text.splitlines()[number - 1] if isinstance(number, int) and number <= len(text.splitlines()) else ""
    hint = (" (an interpolation inside [...] or {...} must be quoted: '${...}')"
            if "${" in line and ("[" in line or "{" in line.replace("${", "")) else "")
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{path}:{number}: not valid YAML: {problem[:300]}{hint}"


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


