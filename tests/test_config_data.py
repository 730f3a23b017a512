"""Data errors name the file and exit 2; outputs follow the umask."""
import gzip
import json
import os
import random

import pytest

from conftest import write_recipe
from posttrain.cli import main
from posttrain.data import DataError, read_rows, write_json, write_rows


def _truncated_gz(path):
    rng = random.Random(0)
    full = gzip.compress("".join(json.dumps({"prompt": str(rng.random()), "completion": str(rng.random())}) + "\n"
                                 for _ in range(3000)).encode())
    path.write_bytes(full[: len(full) // 2])
    return path


@pytest.mark.parametrize("name,make,says", [
    ("rows.jsonl.gz", _truncated_gz, "truncated or corrupt"),
    ("rows.jsonl.gz", lambda p: p.write_text('{"prompt": "a"}\n'), "truncated or corrupt"),  # not gzip at all
    ("rows.parquet", lambda p: p.write_text('{"prompt": "a", "completion": "b"}\n'), "not a readable Parquet file"),
])
def test_unreadable_files_are_data_errors_naming_the_file(tmp_path, name, make, says):
    path = tmp_path / name
    make(path)
    with pytest.raises(DataError, match=says) as info:
        read_rows(path)
    assert str(info.value).startswith(f"{path}: ")


def test_validate_exits_2_naming_the_broken_data_file(tmp_path, capsys):
    data = _truncated_gz(tmp_path / "sft.jsonl.gz")
    data.write_bytes(data.read_bytes()[:40])  # truncated inside the first rows validation reads
    recipe = write_recipe(tmp_path, f"""
name: d
stages:
  sft: {{kind: sft, model: org/model, data: {data}}}
""")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:4: stages.sft.data: {data}: the compressed data is truncated" in err and "Traceback" not in err


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        write_rows(tmp_path / "b.jsonl", [{"x": 1}])
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {oct(mode)}
