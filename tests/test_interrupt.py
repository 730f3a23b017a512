"""Ctrl-C: no traceback, the stage's manifest and `posttrain status` say interrupted, and a stage made from
an upstream that has since failed, been interrupted or re-run is shown stale, never complete."""
import json
import os
import signal
import subprocess
import sys
import time

from children import kill_group
from conftest import posttrain_cli, write_recipe
from posttrain.cli import main

RECIPE = """
name: ctrlc
stages:
  data: {kind: tinyworld, pretrain_rows: 200, sft_rows: 20, rl_rows: 20}
  base:
    kind: pretrain
    model: builtin:tiny
    data: ${stages.data.output.pretrain}
    architecture: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2, intermediate_size: 64}
    max_length: 96
    train: {learning_rate: 3.0e-3, max_steps: 100000, per_device_train_batch_size: 4, save_steps: 50, logging_steps: 10}
"""


def test_ctrl_c_is_reported_as_interrupted_without_a_traceback(tmp_path):
    recipe, run_dir = write_recipe(tmp_path, RECIPE), tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "run", str(recipe), "--out", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and "loss" not in _read(run_dir / "base" / "stage.log"):
            time.sleep(0.5)  # until the trainer has logged a step
        assert time.time() < deadline, "the pretrain stage never started"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
        out, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc.pid)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err, err[-3000:]
    manifest = json.loads((run_dir / "base" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["error"] == "interrupted (Ctrl-C)"
    status = posttrain_cli("status", run_dir, check=True).stdout
    assert [line.split()[:3] for line in status.splitlines() if line.split()[:1] == ["base"]] == \
        [["base", "pretrain", "interrupted"]], status


def _read(path):
    try:
        return path.read_text()
    except OSError:
        return ""


def _manifest(stage, status, upstream, fingerprint):
    return {"stage": stage, "kind": "sft", "status": status, "fingerprint": fingerprint, "upstream": upstream,
            "wall_time_s": 1.0, "metrics": {"final_loss": 0.5}, "error": None}


def test_a_stage_made_from_a_failed_upstream_is_stale(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    stages = {"a": _manifest("a", "failed", {}, "aaaa1111aaaa1111"),
              "b": _manifest("b", "complete", {"a": "aaaa0000aaaa0000"}, "bbbb1111bbbb1111"),
              "c": _manifest("c", "complete", {"b": "bbbb1111bbbb1111"}, "cccc1111cccc1111")}
    for name, m in stages.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "run.json").write_text(json.dumps({"recipe": "r", "stages": list(stages)}))
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["b"], ["c"])}
    assert rows["b"].split()[2] == "stale" and "made from an earlier a" in rows["b"], rows
    assert rows["c"].split()[2] == "stale" and "made from an earlier b" in rows["c"], rows  # b will be redone
