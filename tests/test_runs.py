"""Run-store semantics on a real tiny chain: caching, invalidation, exact resume after kill -9, the lock."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import posttrain_cli, write_mini_chain
from posttrain.recipe import load
from posttrain.runner import plan, run
from posttrain.store import LockedError, RunStore


def weights(run_dir: Path, stage: str) -> dict:
    return load_file(run_dir / stage / "model" / "model.safetensors")


def manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "manifest.json").read_text())


def actions(recipe_path, run_dir, overrides=()):
    return {s.name: s.action for s in plan(load(recipe_path, list(overrides)), RunStore(run_dir))}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One uninterrupted run of the mini chain (data -> base -> sft -> dpo -> rlvr), shared by the tests
    below; they copy it before changing it."""
    root = tmp_path_factory.mktemp("finished")
    recipe = write_mini_chain(root)
    run_dir = root / "run"
    old = os.umask(0o002)  # a group-shared run folder: see test_outputs_follow_the_umask
    try:
        run(load(recipe), run_dir, echo=lambda m: None)
    finally:
        os.umask(old)
    return recipe, run_dir


def test_outputs_follow_the_umask(finished_run):
    """Under umask 002 every file of the run is 0664 or wider and every folder 0775, model.safetensors too
    (safetensors writes it 0600 through a temp file), so colleagues sharing the folder can read it."""
    _, run_dir = finished_run
    paths = [p for p in run_dir.rglob("*") if not p.is_symlink()]
    narrow = [f"{p.relative_to(run_dir)} {oct(p.stat().st_mode & 0o777)}" for p in paths
              if p.stat().st_mode & (0o775 if p.is_dir() else 0o664) != (0o775 if p.is_dir() else 0o664)]
    assert any(p.name == "model.safetensors" for p in paths) and not narrow, narrow[:10]


def test_manifest_records_what_the_issue_asks(finished_run):
    recipe, run_dir = finished_run
    m = manifest(run_dir, "sft")
    assert m["status"] == "complete" and m["upstream"] == {"base": manifest(run_dir, "base")["fingerprint"]}
    assert list(m["inputs"].values())[0] and m["versions"]["trl"] and m["started"] <= m["ended"]
    assert (run_dir / m["artifacts"]["model"]).is_dir() and (run_dir / "sft" / "config.resolved.yaml").exists()
    assert m["metrics"]["final_loss"] < m["metrics"]["first_loss"]  # it learned something
    gen = json.loads((run_dir / "sft" / "model" / "generation_config.json").read_text())
    tok = json.loads((run_dir / "sft" / "model" / "tokenizer_config.json").read_text())
    assert gen["eos_token_id"] is not None and tok["eos_token"] == "<|endoftext|>"


def test_rerun_is_fully_cached(finished_run, capsys):
    recipe, run_dir = finished_run
    before = {s: manifest(run_dir, s)["ended"] for s in ("data", "base", "sft", "dpo", "rlvr")}
    proc = posttrain_cli("run", recipe, "--out", run_dir, check=True)
    assert "nothing to do" in proc.stdout and proc.stdout.count("cached") >= 5
    assert {s: manifest(run_dir, s)["ended"] for s in before} == before


def test_run_is_quiet_and_each_stage_keeps_its_output_in_its_log(finished_run, tmp_path):
    recipe, run_dir = finished_run
    shutil.copytree(run_dir, tmp_path / "run")
    proc = posttrain_cli("run", recipe, "--out", tmp_path / "run", "--only", "dpo", "--force", check=True)
    lines = proc.stdout.splitlines()
    # cached data, base, sft; dpo's start and result; cached rlvr; done; where the final model is. No bars, no
    # log dicts, on either stream.
    assert len(lines) == 8 and lines[3].startswith("[dpo] run: forced"), proc.stdout
    assert lines[7] == f"final model: {tmp_path / 'run' / 'rlvr' / 'model'}", proc.stdout
    assert lines[4].startswith("[dpo] complete in") and " steps loss 0.69" in lines[4], proc.stdout
    assert "'loss'" not in proc.stdout + proc.stderr and "%|" not in proc.stderr, proc.stderr[-2000:]
    log = (tmp_path / "run" / "dpo" / "stage.log").read_text()
    assert "'loss'" in log and "/8 [" in log  # TRL's detail and its progress bar are kept
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S* \[dpo\] stage started", log, re.M), log[:500]
    assert re.search(r"^\S+ \[dpo\] stage finished$", log, re.M), log[-500:]


def test_formatting_does_not_change_fingerprints(finished_run, tmp_path):
    recipe, run_dir = finished_run
    text = recipe.read_text().replace("    max_length: 96\n", "    max_length: 96   # a comment\n")
    reformatted = tmp_path / "mini.yaml"
    reformatted.write_text("# reformatted\n" + text)
    assert set(actions(reformatted, run_dir).values()) == {"cached"}


def test_config_change_reruns_stage_and_downstream_only(finished_run, tmp_path):
    recipe, run_dir = finished_run
    assert actions(recipe, run_dir, ["stages.base.train.learning_rate=0.002"]) == {
        "data": "cached", "base": "run", "sft": "run", "dpo": "run", "rlvr": "run"}
    assert actions(recipe, run_dir, ["stages.dpo.beta=0.2"]) == {
        "data": "cached", "base": "cached", "sft": "cached", "dpo": "run", "rlvr": "run"}
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    base_before = manifest(copy, "base")["ended"]
    run(load(recipe, ["stages.sft.train.max_steps=6"]), copy, only="sft", echo=lambda m: None)
    assert manifest(copy, "base")["ended"] == base_before
    assert manifest(copy, "sft")["metrics"]["global_step"] == 6


def test_edited_artifact_is_detected_and_rerun(finished_run, tmp_path):
    recipe, run_dir = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with open(copy / "data" / "rl.jsonl", "a") as f:
        f.write('{"prompt": "tampered"}\n')
    steps = {s.name: s for s in plan(load(recipe), RunStore(copy))}
    assert steps["data"].action == "run" and "modified" in steps["data"].reason
    assert steps["base"].action == "run"  # downstream of a stage that will run


def test_only_and_from(finished_run, tmp_path):
    recipe, run_dir = finished_run
    steps = {s.name: s.action for s in plan(load(recipe), RunStore(run_dir), start="dpo")}
    assert steps == {"data": "cached", "base": "cached", "sft": "cached", "dpo": "run", "rlvr": "run"}
    steps = {s.name: s.action for s in plan(load(recipe), RunStore(run_dir), only="sft", force=True)}
    assert steps == {"data": "cached", "base": "cached", "sft": "run", "dpo": "cached", "rlvr": "cached"}
    empty = tmp_path / "empty"
    proc = posttrain_cli("run", recipe, "--out", empty, "--only", "sft")
    assert proc.returncode == 2 and "has not finished" in proc.stderr


def _complete_json(path) -> bool:
    """Whether the file exists and parses: a checkpoint counts once its trainer_state.json is whole (a kill
    while TRL is still writing it leaves a checkpoint that is rightly skipped, and the stage starts over)."""
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


# RLVR in the fast suite (its reward workers must die with it); SFT and DPO are killed at every kind of point
# by test_faults' seeded campaigns, so their kill -9 twins run with the slow tests.
@pytest.mark.parametrize("stage,checkpoint", [pytest.param("sft", 6, marks=pytest.mark.slow),
                                              pytest.param("dpo", 4, marks=pytest.mark.slow), ("rlvr", 2)])
def test_kill_9_mid_stage_then_resume_is_exact(finished_run, tmp_path, stage, checkpoint):
    recipe, run_dir = finished_run
    killed = tmp_path / "killed"
    shutil.copytree(run_dir, killed)
    for name in load(recipe).downstream(stage):
        shutil.rmtree(killed / name)
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "run", str(recipe), "--out", str(killed)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = killed / stage / "checkpoints" / f"checkpoint-{checkpoint}" / "trainer_state.json"
    deadline = time.time() + 300
    while not _complete_json(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # with the reward workers it forked
    proc.wait()
    assert manifest(killed, stage)["status"] == "running"
    assert actions(recipe, killed)[stage] == "resume"
    run(load(recipe), killed, echo=lambda m: None)
    resumed, straight = weights(killed, stage), weights(run_dir, stage)
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert (resumed[key] == straight[key]).all(), key
    steps = [r["step"] for r in map(json.loads, (killed / stage / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(set(steps)), "replayed steps were logged twice"
    assert manifest(killed, stage)["metrics"]["global_step"] == manifest(run_dir, stage)["metrics"]["global_step"]


def test_half_written_checkpoint_is_never_loaded(tmp_path):
    from posttrain.training import latest_checkpoint

    ckpts = tmp_path / "checkpoints"
    (ckpts / "checkpoint-4").mkdir(parents=True)
    (ckpts / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}')
    (ckpts / "checkpoint-4" / "model.safetensors").write_bytes(b"x")
    (ckpts / "checkpoint-8").mkdir()
    (ckpts / "checkpoint-8" / "model.safetensors").write_bytes(b"x")  # killed before trainer_state.json
    (ckpts / "checkpoint-12").mkdir()
    (ckpts / "checkpoint-12" / "trainer_state.json").write_text('{"global_')  # killed mid-write
    assert latest_checkpoint(ckpts).name == "checkpoint-4"


def test_lock_refuses_a_second_run_and_frees_on_death(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from posttrain.store import RunStore; store = RunStore(sys.argv[1]); store.lock(); "
        "print('locked', flush=True); time.sleep(60)"), str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(LockedError, match=f"pid {holder.pid}"):
        RunStore(tmp_path).lock()
    holder.send_signal(signal.SIGKILL)  # a dead holder leaves a stale lock file behind
    holder.wait()
    store = RunStore(tmp_path)
    store.lock()
    store.unlock()


def test_failed_stage_is_recorded_and_not_consumed(tmp_path, sft_file):
    from conftest import MINI_RECIPE

    recipe = tmp_path / "r.yaml"
    recipe.write_text(MINI_RECIPE.replace("SFT_DATA", str(sft_file)))
    # Valid JSON without a completion, past the rows validation reads (the first 20): the SFT stage must fail, and
    # exit 2 (bad data, found at run time)
    with open(sft_file, "a") as f:
        f.write('{"prompt": "only a prompt"}\n')
    bad_line = len(sft_file.read_text().splitlines())
    proc = posttrain_cli("run", recipe, "--out", tmp_path / "run")
    assert proc.returncode == 2 and f"{sft_file}:{bad_line}: " in proc.stderr and "Traceback" not in proc.stderr
    m = manifest(tmp_path / "run", "sft")
    assert m["status"] == "failed" and "fits no SFT format" in m["error"]
    assert not (tmp_path / "run" / "sft" / "model").exists()



def heldout_nll(model_dir: Path, n: int = 64) -> float:
    """Mean per-token NLL of the tutor's (always right) solution to n held-out problems, prompt in the chat
    template, scored on the reply tokens only: how well a model has learned to solve unseen problems."""
    import re

    import torch

    from posttrain import hf
    from posttrain.worlds import arith, tinyworld

    tokenizer, model = hf.load_tokenizer(str(model_dir)), hf.load_model(str(model_dir), dtype="float32")
    total, count = 0.0, 0
    for row in tinyworld.heldout_rows(n):
        a, b = map(int, re.findall(r"\d+", row["prompt"][0]["content"]))
        op = "+" if a + b == int(row["ground_truth"]) else "-"
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(arith.TEACHERS["tutor"]((a, op, b), None), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + r_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(p_ids) - 1:-1]
        total += torch.nn.functional.cross_entropy(logits, ids[0, len(p_ids):], reduction="sum").item()
        count += len(r_ids)
    return total / count


def test_sft_solves_held_out_problems_better_than_its_base(finished_run):
    """The fast suite's learning claim (the demo-sized one is in the slow test_tiny_recipe): after 12 SFT steps
    the tutor's solutions to problems no training row contains are more likely than under the base."""
    _, run_dir = finished_run
    base, sft = heldout_nll(run_dir / "base" / "model"), heldout_nll(run_dir / "sft" / "model")
    assert sft < 0.92 * base, (base, sft)  # measured: 4.26 -> 3.68
