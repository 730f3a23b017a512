"""ZeRO-3 as on a cluster, in one CPU process: `stage3_param_persistence_threshold: 0` partitions every
parameter, however small, as an 8B model's are. SFT, DPO and RLVR must export the trained (gathered)
weights, equal to their last checkpoint's, in a folder plain transformers loads; an export whose shapes
do not match the model's config is never marked complete. A LoRA adapter is merged into a whole load of the
base. A `posttrain run` SIGKILLed mid-stage leaves no worker behind, and its restart resumes exactly."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from children import alive, held_locks, kill_group, kill_process
from conftest import MINI_RECIPE, write_mini_chain, write_mini_files
from posttrain.recipe import load
from posttrain.runner import plan, run
from posttrain.store import RunStore

# Small matrices behave like large ones: nothing stays whole on every rank.
ZERO3_ALL_PARTITIONED = {
    "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                          "stage3_gather_16bit_weights_on_model_save": True},
}
TRAINED = ("sft", "dpo", "rlvr")


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    return state


def _launcher(root: Path) -> str:
    ds = root / "zero3_all.json"
    ds.write_text(json.dumps(ZERO3_ALL_PARTITIONED))
    return f"{{type: accelerate, num_processes: 1, deepspeed: {ds}}}"


def _finished(root: Path, recipe: Path, overrides: list[str]) -> tuple[Path, list[str], Path]:
    """(recipe, overrides, run folder) of an uninterrupted run."""
    run(load(recipe, overrides), root / "run", echo=lambda m: None)
    return recipe, overrides, root / "run"


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero3")
    launcher = _launcher(root)
    return _finished(root, write_mini_chain(root), [f"stages.{s}.launcher={launcher}" for s in TRAINED])


@pytest.mark.slow
@pytest.mark.parametrize("stage", TRAINED)
def test_zero3_export_equals_last_checkpoint_and_reloads(zero3_run, stage):
    from transformers import AutoConfig, AutoModelForCausalLM

    run_dir = zero3_run[2]
    manifest = json.loads((run_dir / stage / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    exported = run_dir / manifest["artifacts"]["model"]
    checkpoints = sorted((run_dir / stage / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    last = _tensors(checkpoints[-1])
    out = _tensors(exported)
    assert out.keys() == last.keys()
    for name, tensor in out.items():
        assert tensor.numel() > 0 and tensor.shape == last[name].shape, (name, tensor.shape, last[name].shape)
        assert tensor.float().equal(last[name].float()), name
    config = AutoConfig.from_pretrained(exported)
    assert out["model.embed_tokens.weight"].shape == (config.vocab_size, config.hidden_size)
    model = AutoModelForCausalLM.from_pretrained(exported)  # plain transformers, no DeepSpeed
    assert model.get_input_embeddings().weight.shape == (config.vocab_size, config.hidden_size)


def test_export_check_refuses_empty_or_misshapen_weights(tmp_path):
    """What rank 0 alone saves from a ZeRO-3 model: (0,)-shaped tensors. The check refuses it, and a model
    that does not fit its config, before the folder is put in place (so the stage is not marked complete)."""
    import torch
    from safetensors.torch import load_file, save_file

    from posttrain import hf
    from posttrain.worlds import tinyworld

    tok = tinyworld.build_tokenizer()
    model = tinyworld.build_model(tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=2, intermediate_size=64)
    hf.save_model(model, tok, tmp_path / "good")  # passes the check
    weights = tmp_path / "good" / "model.safetensors"
    state = load_file(weights)
    for name, broken in [("model.norm.weight", torch.empty(0)), ("model.norm.weight", torch.ones(31)),
                         ("model.layers.0.mlp.up_proj.weight", None)]:
        bad = dict(state)
        if broken is None:
            del bad[name]
        else:
            bad[name] = broken
        save_file(bad, weights)
        with pytest.raises(hf.ExportError, match="model.norm.weight|up_proj"):
            hf.check_export(tmp_path / "good")
    with pytest.raises(hf.ExportError, match="empty"):
        hf.save_model(model, tok, tmp_path / "zero3", state_dict={k: torch.empty(0) for k in state})
    assert not (tmp_path / "zero3").exists()


LORA = "{r: 4, alpha: 8, dropout: 0.0}"


@pytest.fixture(scope="module")
def zero3_lora(tmp_path_factory):
    """data -> base (in this process) -> SFT with a LoRA block under ZeRO-3, merged on export."""
    root = tmp_path_factory.mktemp("zero3_lora")
    recipe = root / "mini.yaml"
    recipe.write_text(MINI_RECIPE.replace("SFT_DATA", str(write_mini_files(root)[0])))
    return _finished(root, recipe, [f"stages.sft.launcher={_launcher(root)}", f"stages.sft.lora={LORA}"])


@pytest.mark.slow  # 26 s here (65 s under load): one stage under accelerate and DeepSpeed
def test_zero3_lora_export_is_the_base_with_the_last_checkpoints_adapter_merged(zero3_lora):
    """Under ZeRO-3 the adapter's and the base's parameters are partitioned too: the export must merge the
    gathered adapter into a whole (not partitioned) load of the base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = zero3_lora[2]
    manifest = json.loads((run_dir / "sft" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    exported = _tensors(run_dir / manifest["artifacts"]["model"])
    checkpoints = sorted((run_dir / "sft" / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    adapter = _tensors(checkpoints[-1])
    assert adapter and all(t.numel() > 0 for t in adapter.values()), "the checkpoint's adapter was saved partitioned"
    base = AutoModelForCausalLM.from_pretrained(run_dir / "base" / "model", dtype=torch.float32)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    want = PeftModel.from_pretrained(base, checkpoints[-1]).merge_and_unload().state_dict()
    assert exported.keys() == {k for k in want if k != "lm_head.weight" or "lm_head.weight" in exported}
    for name, tensor in exported.items():
        assert tensor.numel() > 0 and tensor.shape == want[name].shape, (name, tensor.shape, want[name].shape)
        assert tensor.float().equal(want[name].float()), name
    assert any(not exported[k].equal(base_state[k]) for k in exported), "the export is the base: no adapter merged"
    model = AutoModelForCausalLM.from_pretrained(run_dir / manifest["artifacts"]["model"])  # plain transformers
    assert not hasattr(model, "peft_config") and sum(p.numel() for p in model.parameters()) > 0


# Every Python process of the killed run carries this hook: the one that opens the given checkpoint's
# trainer_state.json for writing (the worker, rank 0) marks it and stops there, mid-save, until it is killed.
HOLD = r"""
import os, sys, time
AT, MARK = os.environ["HOLD_AT"], os.environ["HOLD_MARK"]

def hook(event, args):
    if event == "open" and str(args[0]).endswith(AT) and ("w" in str(args[1] or "") or (args[2] or 0) & os.O_WRONLY):
        os.close(os.open(MARK, os.O_CREAT | os.O_WRONLY))
        while True:
            time.sleep(0.1)

sys.addaudithook(hook)
"""
STOP_AT = "sft/checkpoints/checkpoint-6/trainer_state.json"  # of 12 steps, saved every 3: resumes at 3


def _start_held(tmp_path: Path, recipe: Path, overrides: list[str], out: Path) -> subprocess.Popen:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(HOLD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HOLD_AT": STOP_AT,
           "HOLD_MARK": str(tmp_path / "held"), "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "run.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "posttrain.cli", "run", str(recipe), *overrides, "--out",
                                 str(out), "--only", "sft"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait_until(condition, timeout: float, why) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, why()
        time.sleep(0.05)


@pytest.mark.slow  # after its reference run (a shared fixture), 40 s here: two launched SFT runs
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_zero3_sigkilled_run_leaves_no_worker_and_resumes_exactly(request, tmp_path, kind):
    """Only `posttrain run` gets SIGKILL, as from the OOM killer or a scheduler: its accelerate launcher and
    DeepSpeed worker must go too, within seconds, and the restart must reach the uninterrupted run's weights
    bit for bit (fp32 on CPU, the same batches in the same order: nothing may differ)."""
    import psutil

    recipe, overrides, reference = request.getfixturevalue("zero3_run" if kind == "full" else "zero3_lora")
    out = tmp_path / "run"
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns("sft", "dpo", "rlvr"))
    proc, family = _start_held(tmp_path, recipe, overrides, out), []

    def log() -> str:
        return (tmp_path / "run.log").read_text()[-3000:]

    try:
        _wait_until(lambda: (tmp_path / "held").exists() or proc.poll() is not None, 600, log)
        assert proc.poll() is None, log()
        family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert any("posttrain.launch" in " ".join(psutil.Process(p).cmdline()) for p in family), family
        os.kill(proc.pid, signal.SIGKILL)  # that process alone: not its group, not its children
        proc.wait()
        _wait_until(lambda: not any(map(alive, family)), 15, lambda: f"outlived posttrain run: {list(filter(alive, family))}")
        assert held_locks(out) == {}
    finally:
        kill_group(proc.pid)
        for pid in family:
            kill_process(pid)
    loaded = load(recipe, overrides)
    assert {s.name: s.action for s in plan(loaded, RunStore(out), only="sft")}["sft"] == "resume"
    run(loaded, out, only="sft", echo=lambda m: None)
    resumed, straight = _tensors(out / "sft" / "model"), _tensors(reference / "sft" / "model")
    assert resumed.keys() == straight.keys()
    assert all(resumed[k].equal(straight[k]) for k in straight), [k for k in straight if not resumed[k].equal(straight[k])]
    steps = [r["step"] for r in map(json.loads, (out / "sft" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 13)), "steps replayed or missing"


@pytest.mark.slow  # after its reference run (a shared fixture), one launched SFT run
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_zero3_killed_after_its_last_checkpoint_exports_the_same_model(request, tmp_path, kind):
    """Killed after the last checkpoint, before the manifest: the restart loads that checkpoint into the
    partitioned model instead of training (a LoRA adapter through PEFT), then gathers and exports it."""
    recipe, overrides, reference = request.getfixturevalue("zero3_run" if kind == "full" else "zero3_lora")
    out = tmp_path / "run"
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns("dpo", "rlvr"))
    manifest = json.loads((out / "sft" / "manifest.json").read_text())
    (out / "sft" / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    shutil.rmtree(out / "sft" / "model")
    run(load(recipe, overrides), out, only="sft", echo=lambda m: None)
    resumed, straight = _tensors(out / "sft" / "model"), _tensors(reference / "sft" / "model")
    assert resumed.keys() == straight.keys()
    assert all(resumed[k].equal(straight[k]) for k in straight), [k for k in straight if not resumed[k].equal(straight[k])]
    assert json.loads((out / "sft" / "manifest.json").read_text())["metrics"] == manifest["metrics"]
