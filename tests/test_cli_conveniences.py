"""What a new user reaches for: --version, -v after the subcommand, help text on every argument, `status`
given the recipe instead of its run folder, and `status` while a run is still planning."""
import argparse
import json
import subprocess

import pytest

from conftest import write_recipe
from posttrain.cli import build_parser, main


def test_version_names_the_release_and_commit(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=__file__.rsplit("/", 1)[0])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("posttrain 0.") and f"(git {head.stdout.strip()[:12]}" in out, out


def test_verbose_is_accepted_before_and_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["-v", "validate", "r.yaml"]).verbose is True
    assert parser.parse_args(["validate", "r.yaml", "-v"]).verbose is True
    assert parser.parse_args(["status", "runs/x", "--verbose"]).verbose is True
    assert parser.parse_args(["validate", "r.yaml"]).verbose is False


def test_every_argument_of_every_command_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {a.dest}" for name, c in [("posttrain", parser), *sub.choices.items()] for a in c._actions
               if not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert not missing, missing


RECIPE = "name: mystatus\nstages:\n  data: {kind: tinyworld, sft_rows: 10}\n"


def test_status_of_a_recipe_reads_its_run_folder_and_a_starting_run_is_not_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path, RECIPE)
    run_dir = tmp_path / "runs" / "mystatus"
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").write_text("pid 1 on host since now")  # `run` has locked the folder and is planning
    assert main(["status", str(recipe)]) == 0
    assert "a run is starting (planning); no stage has started yet" in capsys.readouterr().out
    (run_dir / "run.json").write_text(json.dumps({"recipe": "mystatus", "stages": ["data"]}))
    assert main(["status", str(recipe)]) == 0
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.startswith("data")] == \
        [["data", "-"]]  # listed, not run yet
    assert main(["status", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
