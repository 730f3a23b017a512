"""The distill stage (stages/distill.py) on the tiny world's mini chain: the SFT model teaches the weaker base it
was trained from, on the prompts of the SFT file. It must move the student toward the teacher on held-out prompts
(the divergence on the student's own answers falls, the held-out score nears the teacher's), keep the contract of
every training stage (cached, exact resume after kill -9, an export that transformers loads and that stops at its
end-of-turn token, curves in metrics.jsonl and the report), and refuse a teacher with another tokenizer."""
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import MINI_RECIPE, write_mini_files
from posttrain.cli import main
from posttrain.recipe import load
from posttrain.runner import run
from test_runs import _complete_json, actions, heldout_nll, manifest, weights
from test_training import run_stage

DISTILL_TAIL = """
  distill:
    kind: distill
    model: ${stages.base.output.model}      # the student: the weaker base
    teacher: ${stages.sft.output.model}     # the teacher: the base after SFT on the tutor's solutions
    data: SFT_DATA                          # prompt/completion rows: only their prompts are read
    max_completion_length: 24
    train: {learning_rate: 3.0e-3, max_steps: 12, per_device_train_batch_size: 8, save_steps: 4, logging_steps: 1}
"""


def write_recipe(root: Path, tail: str = DISTILL_TAIL) -> Path:
    sft, _ = write_mini_files(root)
    recipe = root / "distill.yaml"
    recipe.write_text(MINI_RECIPE.replace("SFT_DATA", str(sft)) + tail.replace("SFT_DATA", str(sft)))
    return recipe


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    recipe = write_recipe(root)
    run(load(recipe), root / "run", echo=lambda m: None)
    return recipe, root / "run"


def held_out_divergence(student_dir: Path, teacher_dir: Path, n: int = 64, new_tokens: int = 24) -> float:
    """KL(student || teacher) per token (the stage's beta=1 divergence) on the student's greedy answers to n held-out
    problems, which no training row contains, up to and including its end-of-turn token."""
    from posttrain import hf
    from posttrain.worlds import tinyworld

    tok = hf.inference_tokenizer(str(student_dir), padding_side="left")
    student, teacher = (hf.load_model(str(d), dtype="float32").eval() for d in (student_dir, teacher_dir))
    enc = tok.apply_chat_template([r["prompt"] for r in tinyworld.heldout_rows(n)], add_generation_prompt=True,
                                  tokenize=True, return_dict=True, padding=True, return_tensors="pt")
    start = enc["input_ids"].shape[1]
    with torch.no_grad():
        ids = student.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        answer = ids[:, start:]
        ended = torch.cumsum((answer == tok.eos_token_id).long(), 1) - (answer == tok.eos_token_id).long()
        answer_mask = (ended == 0).long()  # up to and including the first end-of-turn token
        mask = torch.cat([enc["attention_mask"], answer_mask], 1)
        log_s, log_t = (torch.log_softmax(m(ids, attention_mask=mask).logits[:, start - 1:-1], -1) for m in (student, teacher))
    kl = (log_s.exp() * (log_s - log_t)).sum(-1)
    return ((kl * answer_mask).sum() / answer_mask.sum()).item()


def test_student_moves_toward_the_teacher_on_held_out_prompts(finished):
    _, run_dir = finished
    base, sft, student = (run_dir / s / "model" for s in ("base", "sft", "distill"))
    before, after = held_out_divergence(base, sft), held_out_divergence(student, sft)
    assert after < 0.3 * before, (before, after)  # measured: 0.134 -> 0.009
    # the held-out score (per-token NLL of the right solution, lower is better) moves most of the way to the teacher's
    score_base, score_teacher, score_student = heldout_nll(base), heldout_nll(sft), heldout_nll(student)
    assert score_teacher < score_base, (score_base, score_teacher)
    # measured: base 4.32, teacher 3.71, distilled 3.88 (72% of the gap)
    assert score_base - score_student > 0.5 * (score_base - score_teacher), (score_base, score_student, score_teacher)


def test_curves_hold_the_divergence_and_the_report_plots_it(finished, tmp_path):
    from posttrain.data import read_rows
    from posttrain.eval.plots import curve_panels, training_curves

    _, run_dir = finished
    rows = [r for r in read_rows(run_dir / "distill" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all("entropy" in r and "completions/mean_length" in r for r in rows)
    losses = [r["loss"] for r in rows]
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3]), losses  # the divergence on the student's samples falls
    assert curve_panels(rows, "distill")[0][:2] == ("loss: teacher–student divergence", "generalised JSD per token")
    assert curve_panels(rows, "sft")[0][0] == "loss"
    assert training_curves("distill (distill)", rows, tmp_path / "curves.png", "distill").stat().st_size > 0
    m = manifest(run_dir, "distill")["metrics"]
    assert m["global_step"] == 12 and m["prompts"] == 200 and m["final_loss"] == losses[-1]


def test_export_loads_in_transformers_and_stops_at_its_end_of_turn_token(finished, tmp_path):
    """A teacher that answers "Say ok." with "ok" and its end-of-turn token; the pretrained base, which does not
    stop, learns from it alone, on its own samples, to answer and stop: the export loads in plain transformers and
    its generation_config ends the turn."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "ok.jsonl"
    data.write_text(json.dumps({"prompt": "Say ok.", "completion": "ok"}) + "\n")
    student = str(finished[1] / "base" / "model")
    _, teacher = run_stage("sft", {"model": student, "data": [{"path": str(data), "count": 64}], "max_length": 32,
                                   "train": {"learning_rate": 1e-2, "max_steps": 30, "per_device_train_batch_size": 8}},
                           tmp_path / "teacher")
    data.write_text(data.read_text() * 8)  # one generation batch of prompts
    _, ctx = run_stage("distill", {"model": student, "teacher": str(teacher.output("model")), "data": str(data),
                                   "max_completion_length": 16, "train": {"learning_rate": 1e-2, "max_steps": 60,
                                                                          "per_device_train_batch_size": 8}}, tmp_path)
    answers = {}
    for name, out in (("student", student), ("teacher", teacher.output("model")), ("distilled", ctx.output("model"))):
        tok, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
        assert model.generation_config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
        prompt = tok.apply_chat_template([{"role": "user", "content": "Say ok."}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
        with torch.no_grad():  # no eos passed: generate stops where the checkpoint's own generation_config says
            answers[name] = tok.decode(model.generate(**prompt, max_new_tokens=10, do_sample=False)[0, prompt["input_ids"].shape[1]:])
    assert answers["teacher"] == answers["distilled"] == "ok<|endoftext|>" != answers["student"], answers


def test_cached_and_a_changed_knob_reruns_only_distill(finished, tmp_path):
    recipe, run_dir = finished
    assert actions(recipe, run_dir)["distill"] == "cached"
    changed = actions(recipe, run_dir, ["stages.distill.beta=0.5"])
    assert changed["distill"] == "run" and {changed[s] for s in ("data", "base", "sft")} == {"cached"}


def _resume_is_exact(killed: Path, run_dir: Path, log: str) -> None:
    """The resumed stage loaded a checkpoint (it did not start over) and ends with the uninterrupted run's weights
    and curve: every step logged once, with the same loss."""
    resumed_at = re.search(rf"resuming from {re.escape(str(killed))}/distill/checkpoints/checkpoint-(\d+)", log)
    assert resumed_at and int(resumed_at.group(1)) >= 4, log
    resumed, straight = weights(killed, "distill"), weights(run_dir, "distill")
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)
    curve = lambda d: [(r["step"], r["loss"]) for r in map(json.loads, (d / "distill" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]  # noqa: E731
    assert curve(killed) == curve(run_dir)


def _without_distill(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    shutil.rmtree(to / "distill")
    return to


def test_crash_mid_stage_then_resume_is_exact(finished, tmp_path, caplog, monkeypatch):
    """In-process (the fast suite's check; the kill -9 twin below is slow): a crash after step 6, past checkpoint 4."""
    from trl import DistillationTrainer

    recipe, run_dir = finished
    crashed = _without_distill(run_dir, tmp_path / "crashed")
    training_step = DistillationTrainer.training_step

    def crash_after_step_6(self, *args, **kwargs):
        if self.state.global_step == 6:
            raise RuntimeError("crash")
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "training_step", crash_after_step_6)
    with pytest.raises(Exception, match="RuntimeError: crash"):
        run(load(recipe), crashed, echo=lambda m: None)
    monkeypatch.undo()
    assert manifest(crashed, "distill")["status"] == "failed" and actions(recipe, crashed)["distill"] == "resume"
    caplog.set_level(logging.INFO, logger="posttrain")
    run(load(recipe), crashed, echo=lambda m: None)
    _resume_is_exact(crashed, run_dir, caplog.text)


@pytest.mark.slow  # a fresh interpreter to kill: ~15 s of CPU, minutes on a loaded machine
def test_kill_9_mid_stage_then_resume_is_exact(finished, tmp_path, caplog):
    recipe, run_dir = finished
    killed = _without_distill(run_dir, tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "run", str(recipe), "--out", str(killed)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    marker = killed / "distill" / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 240
    while not _complete_json(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert manifest(killed, "distill")["status"] == "running" and actions(recipe, killed)["distill"] == "resume"
    caplog.set_level(logging.INFO, logger="posttrain")
    run(load(recipe), killed, echo=lambda m: None)
    _resume_is_exact(killed, run_dir, caplog.text)


@pytest.mark.slow  # two workers under accelerate: ~60 s of start-up on 2 cores
def test_two_processes_under_accelerate(finished, tmp_path):
    """Each rank generates for its share of the batch; rank 0 alone writes the export and the curves."""
    recipe, run_dir = finished
    launched = _without_distill(run_dir, tmp_path / "launched")
    run(load(recipe, ["stages.distill.launcher={type: accelerate, num_processes: 2}"]), launched, echo=lambda m: None)
    m = manifest(launched, "distill")
    assert m["status"] == "complete" and m["distributed"]["world_size"] == 2, m.get("distributed")
    assert m["metrics"]["global_step"] == 12 and m["metrics"]["final_loss"] < 0.5 * m["metrics"]["first_loss"]
    assert [r["step"] for r in map(json.loads, (launched / "distill" / "metrics.jsonl").read_text().splitlines())
            if "loss" in r] == list(range(1, 13))
    assert held_out_divergence(launched / "distill" / "model", run_dir / "sft" / "model") < 0.3 * held_out_divergence(
        run_dir / "base" / "model", run_dir / "sft" / "model")


def test_lora_student_is_exported_merged(finished, tmp_path):
    """A LoRA student trains adapters only and exports full weights that differ from the student's."""
    from safetensors.torch import load_file

    recipe, run_dir = finished
    lora_run = _without_distill(run_dir, tmp_path / "run")
    run(load(recipe, ["stages.distill.lora={r: 4, alpha: 8}", "stages.distill.train.max_steps=2"]), lora_run,
        echo=lambda m: None)
    merged, student = load_file(lora_run / "distill" / "model" / "model.safetensors"), weights(run_dir, "base")
    assert merged.keys() == student.keys()
    assert any(not torch.equal(merged[k], student[k]) for k in student)


# ---- validation: no training ----

def _swap_two_tokens(model_dir: Path, out: Path) -> Path:
    shutil.copytree(model_dir, out)
    spec = json.loads((out / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = "a", "b"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (out / "tokenizer.json").write_text(json.dumps(spec))
    return out


def test_a_teacher_with_another_tokenizer_is_refused_at_validation(finished, tmp_path, capsys):
    _, run_dir = finished
    student = run_dir / "base" / "model"
    other = _swap_two_tokens(run_dir / "sft" / "model", tmp_path / "other")
    recipe = tmp_path / "r.yaml"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Add 2 and 3."}) + "\n")
    recipe.write_text(f"name: r\nstages:\n  d:\n    kind: distill\n    model: {student}\n    teacher: {other}\n"
                      f"    data: {prompts}\n")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "stages.d.teacher" in err and "do not share a tokenizer" in err and "tokenizer models differ" in err
    recipe.write_text(recipe.read_text().replace(str(other), str(run_dir / "sft" / "model")))
    assert main(["validate", str(recipe)]) == 0
    prompts.write_text(json.dumps({"question": "Add 2 and 3."}) + "\n")  # no prompt, and not an SFT row
    assert main(["validate", str(recipe)]) == 2
    assert f"stages.d.data: {prompts}:1: no prompt: expected `prompt`" in capsys.readouterr().err


def test_a_teacher_known_only_at_run_time_is_checked_before_loading(finished, tmp_path):
    """An upstream stage's output cannot be compared at validation: the stage compares the loaded tokenizers first."""
    from posttrain.data import DataError
    from posttrain.schema import build
    from posttrain.stage import Context, Model, make_ref
    from posttrain.stages.distill import Distill

    _, run_dir = finished
    other = _swap_two_tokens(run_dir / "sft" / "model", tmp_path / "other")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Add 2 and 3."}) + "\n")
    problems = []
    cfg = build(Distill.Config, {"model": str(run_dir / "base" / "model"), "teacher": make_ref("up", "model"),
                                 "data": str(prompts)}, "d", problems, lambda s, o: Model)
    assert not problems and not Distill().check(cfg)
    ctx = Context("d", tmp_path / "d", tmp_path, Distill.outputs, upstream_artifacts={"up": {"model": str(other)}})
    with pytest.raises(DataError, match="do not share a tokenizer \\(token 'a' is id \\d+ in the student's"):
        Distill().run(cfg, ctx)
    assert not (tmp_path / "d").exists()  # refused before anything was prepared or loaded


def test_tokenizer_mismatch_names_a_token_that_differs():
    from posttrain.stages.distill import tokenizer_mismatch

    assert tokenizer_mismatch({"a": 0, "b": 1}, {"a": 0, "b": 1}) is None
    assert tokenizer_mismatch({"a": 0, "b": 1}, {"a": 1, "b": 0}) == ("token 'a' is id 0 in the student's tokenizer "
                                                                      "and 1 in the teacher's")
    assert "has 2 tokens, the teacher's 3" in tokenizer_mismatch({"a": 0, "b": 1}, {"a": 0, "b": 1, "c": 2})


def test_prompts_are_read_from_every_prompt_format():
    from posttrain.data import DataError
    from posttrain.stages.distill import to_prompt

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    assert to_prompt({"prompt": "Hi?", "ground_truth": "1"}, "prompt", "f:1") == [{"role": "user", "content": "Hi?"}]
    assert to_prompt({"prompt": chat}, "prompt", "f:1") == chat
    assert to_prompt({"question": "Hi?"}, "question", "f:1") == [{"role": "user", "content": "Hi?"}]
    assert to_prompt({"messages": chat + [{"role": "assistant", "content": "Hello."}]}, "prompt", "f:1") == chat
    assert to_prompt({"instruction": "Hi?", "output": "Hello."}, "prompt", "f:1") == [{"role": "user", "content": "Hi?"}]
    with pytest.raises(DataError, match=r"f:7: no prompt: expected `prompt` .* it has: text"):
        to_prompt({"text": "Hi?"}, "prompt", "f:7")
