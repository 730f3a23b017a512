"""A stage killed after its final checkpoint was written but before the trainer's own end: the re-run loads
that checkpoint instead of training (training.train_and_save) and does here what the end would have done.

The trainer, after its last step, saves the checkpoint, removes checkpoints beyond `save_total_limit`, then
logs its summary row (train_loss, train_runtime, total_flos, epoch, ...). A kill between the save and the
rest leaves one checkpoint too many and no summary row; nothing resumed would ever add them.
"""
import shutil
import time
from pathlib import Path

from posttrain.data import read_rows, write_rows
from posttrain.stage import Context

SUMMARY_KEY = "train_loss"  # only the trainer's end-of-training row has it


def drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows of metrics.jsonl up to `step`: what a resume replays is logged again, and a line torn
    by a kill is dropped with them."""
    if path.exists() and path.stat().st_size:
        write_rows(path, [r for r in read_rows(path, on_bad_rows="skip") if r.get("step", 0) <= step])


def rotate(checkpoints_dir: Path, limit: int, keep: str | None = None) -> None:
    """Remove all but the newest `limit` checkpoints (and `keep`, the trainer's best), as the trainer does
    after each save."""
    found = sorted((int(d.name.rpartition("-")[2]), d) for d in checkpoints_dir.glob("checkpoint-*")
                   if d.name.rpartition("-")[2].isdigit())
    for _, folder in found[:-limit]:
        if keep is None or Path(keep).resolve() != folder.resolve():
            shutil.rmtree(folder, ignore_errors=True)


def finish_training(trainer, ctx: Context, state: dict) -> None:
    """After the weights of the final checkpoint (its trainer_state.json: `state`) are loaded: rotate the
    checkpoints and log the summary row as the trainer's end does, unless it was logged before the kill.
    train_loss is the mean over all steps, from the running total the checkpoint keeps (metrics_to_run_store);
    this run trained no step, so its speeds are 0."""
    from transformers.trainer_utils import speed_metrics

    start, step = time.time(), state["global_step"]
    trainer.state.log_history, trainer.state.global_step = state.get("log_history", []), step
    if not trainer.is_world_process_zero():
        return
    rotate(ctx.checkpoints_dir, trainer.args.save_total_limit, state.get("best_model_checkpoint"))
    path = ctx.out_dir / "metrics.jsonl"
    drop_rows_after(path, step)
    if path.exists() and any(SUMMARY_KEY in r and r.get("step") == step for r in read_rows(path)):
        return
    # The running totals training.metrics_to_run_store's callback (class MetricsToRunStore) saves in each checkpoint
    saved = state.get("stateful_callbacks", {}).get("MetricsToRunStore", {}).get("attributes", {})
    metrics = speed_metrics("train", start, num_samples=0, num_steps=0)
    metrics.update(total_flos=state.get("total_flos", 0), train_loss=saved.get("total_loss", 0.0) / max(step, 0.001))
    if state.get("epoch") is not None:
        metrics["epoch"] = state["epoch"]
    trainer.state.log_history.append({**metrics, "step": step})
    ctx.log_metrics(metrics, step=step)
