"""train.report_to on a tiny SFT stage, offline with TensorBoard files: the stage logs to its own folder, a
resume continues that run (same folder, same run id, steps increasing, none twice), the manifest's metrics say
where the run is, and a tracker that is not installed is a validation problem naming the pip command."""
import importlib.util
import json
import shutil

import pytest

import posttrain.stages  # noqa: F401  (registers the stage kinds)
from posttrain.schema import build
from posttrain.stage import STAGES
from test_training import run_stage, tiny_model_dir  # noqa: F401  (a fixture)


def scalars(log_dir, tag: str) -> list[int]:
    """The steps TensorBoard shows for `tag`, reading every events file of the folder as one run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_a_resumed_stage_continues_its_tensorboard_run(tiny_model_dir, sft_file, tmp_path):  # noqa: F811
    raw = {"model": str(tiny_model_dir), "data": str(sft_file), "max_length": 64,
           "train": {"learning_rate": 1e-3, "max_steps": 6, "per_device_train_batch_size": 4, "save_steps": 2,
                     "logging_steps": 1, "report_to": "tensorboard"}}
    metrics, ctx = run_stage("sft", raw, tmp_path / "straight")
    log_dir = ctx.out_dir / "tracking" / "tensorboard"
    assert metrics["tracking"] == f"tensorboard: {log_dir}"
    assert scalars(log_dir, "train/loss") == [1, 2, 3, 4, 5, 6]
    assert not list(ctx.checkpoints_dir.glob("runs")), "a second, default log folder"

    # as if killed after logging steps 5 and 6 but before checkpoint-6 was complete
    resumed = tmp_path / "resumed" / "sft"
    shutil.copytree(ctx.out_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-6")
    shutil.rmtree(resumed / "model")
    run_id = (resumed / "tracking" / "run_id").read_text()
    _, again = run_stage("sft", raw, tmp_path / "resumed")
    assert (resumed / "tracking" / "run_id").read_text() == run_id
    assert len(list((resumed / "tracking" / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per attempt
    assert scalars(resumed / "tracking" / "tensorboard", "train/loss") == [1, 2, 3, 4, 5, 6]

    # a fresh start (no checkpoint) is a new run: a new id, no events of the earlier one
    shutil.rmtree(resumed / "checkpoints")
    shutil.rmtree(resumed / "model")
    run_stage("sft", raw, tmp_path / "resumed")
    assert (resumed / "tracking" / "run_id").read_text() != run_id
    assert len(list((resumed / "tracking" / "tensorboard").glob("events.out.tfevents.*"))) == 1


@pytest.mark.parametrize("kind", ["pretrain", "sft", "dpo", "rlvr"])
def test_a_tracker_that_is_not_installed_fails_validation_with_the_pip_command(kind, tmp_path, monkeypatch):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "x", "completion": "y", "chosen": "y", "rejected": "z", "text": "x",
                                "ground_truth": "1", "verifier": "numeric"}) + "\n")
    raw = {"pretrain": {"model": "builtin:tiny", "data": str(rows)}, "sft": {"model": "m", "data": str(rows)},
           "dpo": {"model": "m", "data": str(rows)}, "rlvr": {"model": "m", "data": str(rows), "num_generations": 8}}[kind]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    problems = []
    cfg = build(STAGES[kind].Config, {**raw, "train": {"report_to": "wandb"}}, kind, problems, None)
    assert not problems
    assert ("train.report_to", "wandb is not installed here: pip install 'posttrain[wandb]' (or set report_to: none)") \
        in STAGES[kind]().check(cfg)
    build(STAGES[kind].Config, {**raw, "train": {"report_to": "mlflow"}}, kind, problems, None)
    assert problems and problems[0][0] == f"{kind}.train.report_to"
