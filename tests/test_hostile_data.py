"""Hostile data files: every bad row is an error naming the file and line; `on_bad_rows: skip` skips and
counts them, and the counts reach the manifest. Names from a recipe never write outside the run folder."""
import gzip
import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from children import run_with_deadline
from conftest import MINI_PREFERENCE_TAIL, MINI_RECIPE, write_mini_files
from posttrain.cli import main
from posttrain.data import MAX_LINE_BYTES, DataError, ReadStats, located_rows, read_rows
from posttrain.recipe import RecipeError, load
from posttrain.runner import run
from posttrain.stage import Context
from posttrain.stages.sft import Source, mix

GOOD = b'{"prompt": "2+2?", "completion": "4"}\n'
# (name, bad line, what the error says); each bad line goes on line 3 of a file of good rows.
BAD_LINES = [
    ("malformed json", b'{"prompt": "2+2?", "completion": \n', "malformed row"),
    ("truncated row", b'{"prompt": "2+2?", "compl', "malformed row"),
    ("not an object", b'["prompt", "completion"]\n', "expected a JSON object, got list"),
    ("a bare string", b'"just text"\n', "expected a JSON object, got str"),
    ("non-utf-8 bytes", b'{"prompt": "\xff\xfe caf\xe9", "completion": "4"}\n', "utf-8"),
    ("nul bytes", b'\x00\x00\x00\n', "malformed row"),
]


def _file(tmp_path, bad: bytes, name="rows.jsonl"):
    path = tmp_path / name
    path.write_bytes(GOOD * 2 + bad + (b"\n" if not bad.endswith(b"\n") else b"") + GOOD)
    return path


@pytest.mark.parametrize("name,bad,says", BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_bad_line_is_an_error_naming_file_and_line(tmp_path, name, bad, says):
    path = _file(tmp_path, bad)
    with pytest.raises(DataError) as info:
        read_rows(path)
    assert f"{path}:3:" in str(info.value) and says in str(info.value) and "on_bad_rows: skip" in str(info.value)


@pytest.mark.parametrize("name,bad,says", BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_skip_mode_skips_and_counts(tmp_path, name, bad, says):
    stats = ReadStats()
    rows = read_rows(_file(tmp_path, bad), on_bad_rows="skip", stats=stats)
    assert len(rows) == 3 and stats.rows == 3 and stats.skipped == 1
    assert stats.skipped_examples[0].startswith(f"{tmp_path / 'rows.jsonl'}:3:")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.binary(max_size=40) | st.just(GOOD.rstrip(b"\n")), min_size=1, max_size=8))
def test_arbitrary_bytes_are_rows_or_a_named_error(tmp_path, lines):
    """Any bytes at all: rows, or a DataError naming the file and the first bad line; skip mode counts the rest."""
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    try:
        rows = read_rows(path)
    except DataError as e:
        assert str(e).startswith(f"{path}:")
        if not path.stat().st_size:
            return
        stats = ReadStats()
        assert len(read_rows(path, on_bad_rows="skip", stats=stats)) + stats.skipped <= len(lines) and stats.skipped
    else:
        assert all(isinstance(r, dict) for r in rows)


@pytest.mark.parametrize("name,content,says", [
    ("empty.jsonl", b"", "the file is empty"),
    ("list.json", b'{"a": 1}', "expected a JSON list of objects"),
    ("broken.json", b'[{"a": 1}, ', "not valid JSON"),
    ("rows.csv", b"a,b\n1,2\n", "unknown file type"),
    ("latin1.json", b'[{"a": "caf\xe9"}]', "not valid JSON"),
])
def test_whole_file_problems_name_the_file(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=says) as info:
        read_rows(path)
    assert str(info.value).startswith(str(path))


def test_gzipped_bad_line_names_the_line(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(GOOD + b"{oops\n"))
    with pytest.raises(DataError, match=f"{path}:2:"):
        read_rows(path)


def test_a_100mb_line_is_a_named_error_in_bounded_memory(tmp_path):
    """The line is refused once it passes the limit and read past in chunks; peak memory stays bounded by the
    limit, not the line. Measured in a fresh process per mode, so nothing else counts."""
    path = tmp_path / "huge.jsonl"
    line_mb = 100
    with open(path, "wb") as f:
        f.write(GOOD + b'{"prompt": "' + b"a" * (line_mb * 1024 * 1024) + b'", "completion": "x"}\n' + GOOD)
    assert line_mb * 1024 * 1024 > MAX_LINE_BYTES
    # VmHWM, not ru_maxrss: the latter carries over the (large) parent's peak across fork and exec.
    probe = ("import re, sys; from posttrain.data import DataError, ReadStats, read_rows\n"
             "stats = ReadStats()\n"
             "try:\n    rows = read_rows(sys.argv[1], sys.argv[2], stats); print(len(rows), stats.skipped)\n"
             "except DataError as e:\n    print(e)\n"
             "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    for mode, expected in (("error", f"{path}:2: malformed row: line is 100 MB, over the 64 MB limit"), ("skip", "2 1")):
        out = run_with_deadline([sys.executable, "-c", probe, path, mode], timeout=240)
        assert out.returncode == 0, out.stderr[-3000:]
        said, peak_kb = out.stdout.strip().splitlines()
        assert said.startswith(expected), said
        assert int(peak_kb) < (MAX_LINE_BYTES // 1024 + 60 * 1024), f"{mode}: peak {int(peak_kb) // 1024} MB for a {line_mb} MB line"


# -- rows that parse but have the wrong fields --------------------------------------------------------------
def _ctx(tmp_path) -> Context:
    return Context("sft", tmp_path / "out", tmp_path, {})


@pytest.mark.parametrize("row,says", [
    ({"prompt": "only a prompt"}, "fits no SFT format"),
    ({"prompt": 1, "completion": 2}, "fits no SFT format"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "at least one assistant turn"),
    ({"messages": [{"role": "assistant"}]}, "`messages` must be a list of {role, content}"),
])
def test_wrong_fields_name_the_file_and_row(tmp_path, row, says):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(GOOD + json.dumps(row).encode() + b"\n")
    with pytest.raises(DataError, match=says) as info:
        mix([Source(path=str(path))], _ctx(tmp_path), 0, "error")
    assert str(info.value).startswith(f"{path}:2: ")
    rows, record = mix([Source(path=str(path))], _ctx(tmp_path), 0, "skip")
    assert len(rows) == 1 and record["skipped_rows"] == 1


def test_wrong_field_error_names_the_line_after_blank_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(GOOD + b"\n\n" + b'{"prompt": "only a prompt"}\n')
    with pytest.raises(DataError) as info:
        mix([Source(path=str(path))], _ctx(tmp_path), 0, "error")
    assert str(info.value).startswith(f"{path}:4: ")


# -- end to end: the error through the command line, and the counts in the manifest -------------------------
def test_bad_rows_end_to_end_error_then_skip_counts_in_manifest(tmp_path, capsys):
    sft, prefs = write_mini_files(tmp_path)
    with open(sft, "ab") as f:
        f.write(b"\n" + b"{broken\n" + b"\xff\xfe\n" + b'{"prompt": "no completion"}\n')
    bad_line = len(sft.read_bytes().splitlines()) - 2
    with open(prefs, "ab") as f:
        f.write(b'{"prompt": "p", "chosen": "c"}\n' + b"[1, 2]\n")
    recipe = tmp_path / "mini.yaml"
    recipe.write_text(MINI_RECIPE.replace("SFT_DATA", str(sft)) + MINI_PREFERENCE_TAIL.replace("PREF_DATA", str(prefs))
                      .split("  rlvr:")[0])
    short = ["stages.base.train.max_steps=2", "stages.sft.train.max_steps=2", "stages.dpo.train.max_steps=2"]
    run_dir = tmp_path / "run"

    assert main(["run", str(recipe), "--out", str(run_dir), *short]) == 2  # bad data, found at run time
    err = capsys.readouterr().err
    assert f"{sft}:{bad_line}: malformed row" in err and "Traceback" not in err
    failed = json.loads((run_dir / "sft" / "manifest.json").read_text())
    assert failed["status"] == "failed" and not (run_dir / "sft" / "model").exists()

    run(load(recipe, short + ["stages.sft.on_bad_rows=skip", "stages.dpo.on_bad_rows=skip"]), run_dir, echo=lambda m: None)
    sft_manifest = json.loads((run_dir / "sft" / "manifest.json").read_text())
    assert sft_manifest["status"] == "complete" and sft_manifest["metrics"]["skipped_rows"] == 3
    mixture = json.loads((run_dir / "sft" / "mixture.json").read_text())
    assert mixture["sources"][0]["skipped_rows"] == 3 and mixture["sources"][0]["available"] == 200
    dpo_manifest = json.loads((run_dir / "dpo" / "manifest.json").read_text())
    assert dpo_manifest["metrics"]["skipped_rows"] == 2 and dpo_manifest["metrics"]["pairs"] == 200
    outside = {p.name for p in tmp_path.iterdir()} - {"run"}
    assert outside == {"mini.yaml", "sft.jsonl", "prefs.jsonl"}, "the run wrote outside its run folder"


# -- names from a recipe never write outside the run folder -----------------------------------------------
ESCAPES = ["../x", "..", "a/../../b", "/tmp/abs", "a/b", "./a", ".hidden", "a\\..\\b", "~", "a b", ""]


@pytest.mark.parametrize("name", ESCAPES)
def test_stage_and_recipe_names_cannot_escape(tmp_path, name):
    text = f"name: ok\nstages:\n  {json.dumps(name)}:\n    kind: tinyworld\n"
    with pytest.raises(RecipeError, match="stage names are at most 255 letters"):
        load(_recipe(tmp_path, text))
    with pytest.raises(RecipeError, match="needs a 'name'"):
        load(_recipe(tmp_path, f"name: {json.dumps(name)}\nstages:\n  a:\n    kind: tinyworld\n"))
    with pytest.raises(RecipeError, match="needs a 'name'"):
        load(_recipe(tmp_path, "name: ok\nstages:\n  a:\n    kind: tinyworld\n"), [f"name={json.dumps(name)}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


@pytest.mark.parametrize("label", ["../x", "a/b", "/abs"])
def test_eval_labels_cannot_escape(tmp_path, label):
    text = (f"name: ok\nstages:\n  ev:\n    kind: eval\n    models: {{{json.dumps(label)}: builtin:tiny}}\n"
            f"    tasks: [{{name: gsm8k, label: {json.dumps(label)}}}]\n")
    with pytest.raises(RecipeError) as info:
        load(_recipe(tmp_path, text))
    problems = " ".join(info.value.problems)
    assert f"stages.ev.models.{label}" in problems and "stages.ev.tasks[0].label" in problems


def _recipe(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_hf_ids_load_through_datasets_and_fail_offline_with_advice(tmp_path, monkeypatch):
    """`hf:` specs go through datasets.load_dataset, which takes a hub id or, as here, a local dataset folder
    (the same code path; no network is needed). A hub id that cannot be reached says what to do instead."""
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n')
    assert list(located_rows(f"hf:{folder}")) == [(f"hf:{folder}: row 1", {"prompt": "a", "completion": "b"}),
                                                   (f"hf:{folder}: row 2", {"prompt": "c", "completion": "d"})]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hf:no-such-org/no-such-set: could not load from the hub .*point the recipe at the local file"):
        read_rows("hf:no-such-org/no-such-set")
