"""Hostile recipes: every mutant of a valid recipe gets a clean validation error (RecipeError listing its
problems with file and line; exit code 2 and no traceback from the CLI; nothing written to the run folder),
and no corruption of the text ever escapes as anything but a RecipeError."""
import copy

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import posttrain_cli, write_mini_chain
from posttrain.cli import main
from posttrain.recipe import Recipe, RecipeError, load

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TRAINING = ["base", "sft", "dpo", "rlvr"]  # in chain order: each one's model comes from the previous one
# Typed scalar settings of the mini recipe (not `architecture`, which is a free-form mapping).
NUMERIC = [("data", "sft_rows"), ("base", "max_length"), ("sft", "max_length"), ("rlvr", "num_generations"),
           ("rlvr", "max_completion_length")] + [(s, "train.learning_rate") for s in TRAINING] + \
          [(s, "train.max_steps") for s in TRAINING] + [(s, "train.save_steps") for s in TRAINING]
INPUTS = [("base", "data"), ("sft", "model"), ("dpo", "model"), ("dpo", "data"), ("rlvr", "model"), ("rlvr", "data")]


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """(folder, the valid recipe as data): the mini chain through RLVR, on real files."""
    recipe = write_mini_chain(tmp_path_factory.mktemp("hostile"))
    assert isinstance(load(recipe), Recipe)
    return recipe.parent, yaml.safe_load(recipe.read_text())


def _write(root, text: str):
    path = root / "mutant.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _set(recipe: dict, stage: str, dotted: str, value) -> dict:
    node = recipe["stages"][stage]
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return recipe


def problems_of(root, text: str) -> list[str]:
    path = _write(root, text)
    with pytest.raises(RecipeError) as info:
        load(path)
    problems = info.value.problems
    assert problems and all(p.startswith(str(path)) for p in problems), problems  # every problem names the file
    return problems


# -- mutations: each returns (mutated recipe data, a string some problem must contain) --------------------------
WRONG_VALUES = st.sampled_from(["ten", [1, 2], {"a": 1}, True, None])
NON_FINITE = st.sampled_from([float("inf"), float("-inf"), float("nan")])
HUGE_INTS = st.one_of(st.integers(min_value=2 ** 63), st.integers(max_value=-(2 ** 63) - 1))
BEYOND_FLOAT = st.one_of(st.integers(min_value=2 ** 1024), st.integers(max_value=-(2 ** 1024)))
UNKNOWN_KEYS = st.from_regex(r"zz[a-z_]{0,12}", fullmatch=True)


@st.composite
def wrong_type(draw, recipe):
    stage, key = draw(st.sampled_from(NUMERIC + INPUTS))
    value = draw(WRONG_VALUES.filter(lambda v: not isinstance(v, str)) if (stage, key) in INPUTS else WRONG_VALUES)
    return _set(recipe, stage, key, value), f"stages.{stage}.{key}"


@st.composite
def huge_number(draw, recipe):
    stage, key = draw(st.sampled_from(NUMERIC))
    values = NON_FINITE | BEYOND_FLOAT if key.endswith("learning_rate") else NON_FINITE | HUGE_INTS
    return _set(recipe, stage, key, draw(values)), f"stages.{stage}.{key}"


@st.composite
def unknown_key(draw, recipe):
    key = draw(UNKNOWN_KEYS)
    where = draw(st.sampled_from(["top", "stage", "train"]))
    if where == "top":
        recipe[key] = 1
    else:
        stage = draw(st.sampled_from(TRAINING))
        node = recipe["stages"][stage] if where == "stage" else recipe["stages"][stage]["train"]
        node[key] = draw(st.integers(0, 9))
    return recipe, key


@st.composite
def dangling_reference(draw, recipe):
    stage, key = draw(st.sampled_from(INPUTS))
    missing = draw(UNKNOWN_KEYS)
    ref, expect = draw(st.sampled_from([
        (f"${{stages.{missing}.output.model}}", f"stage '{missing}'"),
        (f"${{stages.sft.output.{missing}}}", f"no output '{missing}'"),
        (f"${{vars.{missing}}}", "cannot resolve interpolation"),
    ]))
    return _set(recipe, stage, key, ref), expect


@st.composite
def cycle(draw, recipe):
    """A stage takes its model from itself or from a stage downstream of it."""
    first = draw(st.integers(0, len(TRAINING) - 1))
    last = draw(st.integers(first, len(TRAINING) - 1))
    return _set(recipe, TRAINING[first], "model", f"${{stages.{TRAINING[last]}.output.model}}"), "dependency cycle"


@st.composite
def bad_chat_template(draw, recipe):
    """A name that is not a built-in (tulu3, Chatml, 'tulu '), or text that renders no conversation."""
    stage = draw(st.sampled_from(["sft", "dpo", "rlvr"]))
    value = draw(st.sampled_from(["tulu3", "Chatml", "tulu ", "", "chatm1", "{{ 'no messages' }}"]))
    return _set(recipe, stage, "chat_template", value), f"stages.{stage}.chat_template"


@st.composite
def wrapped_reference(draw, recipe):
    """A reference joined with text, or escaped: it would lose its graph edge."""
    stage, key = draw(st.sampled_from([s for s in INPUTS if s[1] == "model"]))
    value = draw(st.sampled_from(["x${stages.data.output.rl}", "\\${stages.sft.output.model}", "a b"]))
    return _set(recipe, stage, key, value), f"stages.{stage}.{key}"


MUTATIONS = [wrong_type, huge_number, unknown_key, dangling_reference, cycle, bad_chat_template, wrapped_reference]
YAML_11 = ["1:30", "on", "off", "yes", "no", "1_000", "2020-01-01", "0b101"]  # numbers or booleans in YAML 1.1 only


@SETTINGS
@given(data=st.data())
def test_yaml_11_forms_are_strings_and_refused_where_a_number_is_needed(valid, data):
    root, recipe = valid
    stage, key = data.draw(st.sampled_from(NUMERIC))
    text = yaml.safe_dump(_set(copy.deepcopy(recipe), stage, key, "PLACEHOLDER"), sort_keys=False)
    problems = problems_of(root, text.replace("PLACEHOLDER", data.draw(st.sampled_from(YAML_11))))
    assert any(f"stages.{stage}.{key}: expected" in p for p in problems), problems


@SETTINGS
@given(data=st.data())
def test_every_mutant_gets_a_validation_error(valid, data):
    root, recipe = valid
    mutation = data.draw(st.sampled_from(MUTATIONS))
    mutant, expected = data.draw(mutation(copy.deepcopy(recipe)))
    problems = problems_of(root, yaml.safe_dump(mutant, sort_keys=False))
    assert any(expected in p for p in problems), (mutation.__name__, expected, problems)


BREAKERS = ["\tkey: 1", "bad: [1, 2", 'bad: "unterminated', "bad: {a: 1", "  - an item: [", "key: value: other"]


@SETTINGS
@given(data=st.data())
def test_broken_yaml_names_the_line(valid, data):
    root, recipe = valid
    lines = yaml.safe_dump(recipe, sort_keys=False).splitlines()
    at = data.draw(st.integers(0, len(lines)))
    lines.insert(at, data.draw(st.sampled_from(BREAKERS)))
    [problem] = problems_of(root, "\n".join(lines) + "\n")
    assert "not valid YAML" in problem and problem.split(":")[1].isdigit(), problem


@SETTINGS
@given(data=st.data())
def test_duplicate_key_is_an_error_not_a_silent_overwrite(valid, data):
    root, recipe = valid
    lines = yaml.safe_dump(recipe, sort_keys=False).splitlines()
    scalar_keys = [i for i, line in enumerate(lines) if ": " in line and not line.lstrip().startswith("-")]
    at = data.draw(st.sampled_from(scalar_keys))
    lines.insert(at + 1, lines[at])
    problems = problems_of(root, "\n".join(lines) + "\n")
    assert any(f"{root / 'mutant.yaml'}:{at + 2}: duplicate key" in p for p in problems), problems


@SETTINGS
@given(data=st.data())
def test_any_corruption_is_a_recipe_or_a_recipe_error(valid, data):
    """Cut, splice or garble the text anywhere: load returns a Recipe or raises RecipeError, nothing else."""
    root, recipe = valid
    text = yaml.safe_dump(recipe, sort_keys=False)
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 40)))
    insert = data.draw(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
                       | st.sampled_from(["&a [1]", "*a", "!!binary aGk=", "2020-01-01", "<<: {}", "? [x]", "${", "%"]))
    try:
        load(_write(root, text[:start] + insert + text[end:]))
    except RecipeError as e:
        assert e.problems


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh"))


@pytest.mark.parametrize("text,expected", [
    (ALIAS_BOMB, "YAML aliases expand"),
    ("name: x\nstages: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ("name: x\nstages:\n  a: {kind: [sft]}\n", "unknown stage kind"),
    ("name: x\nstages:\n  a: {kind: tinyworld, sft_rows: !!timestamp 2020-01-01}\n", "unsupported value"),
    ("name: x\nstages:\n  a: {kind: tinyworld, sft_rows: 2020-01-01}\n", "expected an integer, got '2020-01-01'"),
    ("name: x\nstages:\n  a: {kind: tinyworld, sft_rows: !!binary aGk=}\n", "stages.a.sft_rows"),
    ("- a list\n- not a mapping\n", "a recipe is a mapping"),
])
def test_pathological_yaml(tmp_path, text, expected):
    assert any(expected in p for p in problems_of(tmp_path, text))


def test_undecodable_recipe_file(tmp_path):
    path = tmp_path / "mutant.yaml"
    path.write_bytes(b"name: \xff\xfe\nstages: {}\n")
    with pytest.raises(RecipeError, match="cannot read the recipe"):
        load(path)


# -- through the command line: exit code 2, no traceback, no run folder -------------------------------------
def _cli_cases(recipe: dict) -> dict[str, str]:
    cases = {"unknown key": _set(copy.deepcopy(recipe), "sft", "train.max_stepz", 3),
             "cycle": _set(copy.deepcopy(recipe), "base", "model", "${stages.rlvr.output.model}"),
             "huge": _set(copy.deepcopy(recipe), "dpo", "train.max_steps", 10 ** 40),
             "dangling": _set(copy.deepcopy(recipe), "rlvr", "data", "${stages.nope.output.rl}")}
    texts = {name: yaml.safe_dump(r, sort_keys=False) for name, r in cases.items()}
    texts["broken yaml"] = yaml.safe_dump(recipe, sort_keys=False).replace("stages:", "stages: [", 1)
    texts["alias bomb"] = ALIAS_BOMB
    return texts


@pytest.mark.parametrize("command", ["run", "plan", "validate"])
def test_cli_mutants_exit_2_without_traceback_or_writes(valid, tmp_path, capsys, command):
    root, recipe = valid
    for name, text in _cli_cases(recipe).items():
        path = tmp_path / f"{name.replace(' ', '_')}.yaml"
        path.write_text(text)
        out = tmp_path / f"run_{command}_{name.replace(' ', '_')}"
        assert main([command, str(path), "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error:") and str(path) in err and "Traceback" not in err, (name, err)
        assert not out.exists(), f"{name}: {command} wrote to the run folder"


def test_console_command_exit_2_without_traceback(valid, tmp_path):
    """The real console entry point (a subprocess), once for a bad override and once for a cycle."""
    root, recipe = valid
    path = tmp_path / "cycle.yaml"
    path.write_text(_cli_cases(recipe)["cycle"])
    out = tmp_path / "run"
    proc = posttrain_cli("run", path, "--out", out, "stages.sft.train.learning_rate=.inf")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "dependency cycle" in proc.stderr and "expected a finite number" in proc.stderr
    assert not out.exists()


def test_a_kind_that_is_a_broken_interpolation_is_reported_once(tmp_path):
    """Found by the corruption test above: `kind` was resolved outside the per-leaf error handling."""
    problems = problems_of(tmp_path, "name: x\nstages:\n  a: {kind: tinyworld}\n  b: {kind: '${tages.a.output.rl}'}\n")
    assert len(problems) == 1 and "stages.b.kind: cannot resolve interpolation" in problems[0], problems
