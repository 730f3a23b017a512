"""Every CLI path is traceback-free on bad input, with the documented exit codes (0 ok, 2 bad recipe or
command line, 3 locked): a fuzz over subcommands and arguments, run in-process."""
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, write_recipe
from posttrain.cli import main

RECIPE = """
name: cli
stages:
  data:
    kind: tinyworld
    pretrain_rows: 40
    sft_rows: 10
  base:
    kind: pretrain
    model: builtin:tiny
    data: ${stages.data.output.pretrain}
    architecture: {hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2, intermediate_size: 32}
    max_length: 64
    train: {max_steps: 1, per_device_train_batch_size: 4}
  sft:
    kind: sft
    model: ${stages.base.output.model}
    data: SFT
    max_length: 128
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    sft = root / "sft.jsonl"
    sft.write_text('{"prompt": "1+1?", "completion": "2"}\n' * 3)
    good = write_recipe(root, RECIPE.replace("SFT", str(sft)), "good.yaml")
    bad = write_recipe(root, RECIPE.replace("SFT", str(sft)).replace("max_length: 64", "max_length: lots"), "bad.yaml")
    return {"good": str(good), "bad": str(bad), "root": root}


def run_cli(capsys, argv) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out + out.err


WORDS = ["validate", "config", "plan", "inspect", "keys", "status", "report", "run", "nosuch", "-v", "--stage", "sft",
         "data", "--index", "5000", "-1", "x", "--only", "--from", "zz", "--force", "--out", "--reference", "/nope",
         "k=v", "=", "stages.data.sft_rows=1e-3", "stages.base.max_length=100000", "name=" + "n" * 300,
         "stages.zz.kind=sft", "--resume", "dpo", "sft", "GOOD", "BAD", "/no/such.yaml", "ROOT", ""]
READ_ONLY = {"validate", "config", "inspect", "keys", "status", "report", "nosuch", "plan"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(sorted(READ_ONLY)), rest=st.lists(st.sampled_from(WORDS), max_size=5))
def test_fuzzed_command_lines_exit_cleanly(files, capsys, monkeypatch, command, rest):
    monkeypatch.chdir(files["root"])
    subs = {"GOOD": files["good"], "BAD": files["bad"], "ROOT": str(files["root"])}
    argv = [command] + [subs.get(w, w) for w in rest]
    if "run" in argv or "--force" in argv and command == "run":
        return
    code, out = run_cli(capsys, argv)
    assert code in (0, 2, 3), (argv, code, out[-2000:])
    assert "Traceback" not in out, (argv, out[-2000:])


@pytest.mark.parametrize("argv,code,says", [
    (["keys", "nosuchkind"], 2, "kinds: distill, dpo"),
    (["keys", "dpo"], 0, "`train.learning_rate` | float | 5e-07"),
    (["status", "/no/such/run"], 2, "not a run folder"),
    (["inspect", "GOOD", "--index", "-3"], 2, "expected a row number"),
    (["inspect", "GOOD", "--stage", "data"], 2, "inspect shows a stage of kind sft, dpo, reward_model, rlvr; this recipe has: sft (sft)"),
    (["validate", "BAD"], 2, "bad.yaml:"),
    (["validate", "GOOD", "stages.base.train.learning_rate=3e-4"], 0, "is valid"),
    (["config", "GOOD", "--stage", "nosuch"], 2, "no such stage"),
])
def test_documented_exit_codes(files, capsys, monkeypatch, argv, code, says):
    monkeypatch.chdir(files["root"])
    argv = [{"GOOD": files["good"], "BAD": files["bad"]}.get(a, a) for a in argv]
    got, out = run_cli(capsys, argv)
    assert (got, says in out, "Traceback" in out) == (code, True, False), out[-2000:]


def test_keys_into_a_closed_pipe_is_quiet():
    """`posttrain keys | head`: the reader is gone before the output is written (closed here at once,
    while posttrain is still importing), which is a BrokenPipeError on write."""
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "keys"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "Error" not in err, err


@pytest.mark.slow
def test_inspect_suggests_commands_that_work(files, capsys, monkeypatch):
    """The suggestion, run as given, makes inspect work; an index past the mixture is exit 2 with the count."""
    monkeypatch.chdir(files["root"])
    code, out = run_cli(capsys, ["inspect", files["good"]])
    assert code == 2 and "--only data && posttrain run" in out and "--only base" in out
    for command in out.split("run: ", 1)[1].strip().split(" && "):
        assert run_cli(capsys, command.split()[1:])[0] == 0, command
    code, out = run_cli(capsys, ["inspect", files["good"]])
    assert code == 0 and "example 0:" in out
    code, out = run_cli(capsys, ["inspect", files["good"], "--index", "5000"])
    assert code == 2 and "has 3 examples" in out and "Traceback" not in out


def test_a_recipe_path_too_long_for_the_filesystem_exits_2_without_echoing_it(capsys):
    """Found by the fuzz test on a random run: such a path raised OSError from os.stat."""
    assert main(["config", "n" * 5000]) == 2
    err = capsys.readouterr().err
    assert "File name too long" in err and "n" * 200 not in err and "Traceback" not in err
