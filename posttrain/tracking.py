"""Experiment tracking for the training stages (`train.report_to`: tensorboard, wandb, trackio or none),
through transformers' own callbacks. Each stage keeps its tracked run's id in <stage>/tracking/run_id, written
when the stage starts afresh and read back when it resumes, so a resumed stage continues the same run:
- tensorboard: one log folder, <stage>/tracking/tensorboard; a resume purges the events after its checkpoint
  (the steps it replays), so the steps stay increasing with none twice;
- wandb: WANDB_RUN_ID is the saved id with WANDB_RESUME=allow (WANDB_PROJECT, default posttrain, and
  WANDB_MODE=offline are the user's own);
- trackio: the run is named <run folder>-<stage>-<id> and transformers opens it with resume="allow".
The stage's manifest records where the run is (its `tracking` metric); the report lists them."""
import importlib.util
import os
import uuid
from pathlib import Path

# backend -> the module it needs
BACKENDS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def check(report_to: str, where: str = "train.report_to") -> list[tuple[str, str]]:
    if report_to != "none" and importlib.util.find_spec(BACKENDS[report_to]) is None:
        return [(where, f"{report_to} is not installed here: pip install 'posttrain[{report_to}]' "
                        f"(or set {where.rsplit('.', 1)[-1]}: none)")]
    return []


def report_to(backend: str) -> list[str]:
    """TRL's report_to: [] (not "none", which older transformers read as "all") or the one backend."""
    return [] if backend == "none" else [backend]


def start(trainer, out_dir: Path, resumed_step: int | None) -> str | None:
    """Point the trainer's tracker at this stage's tracked run, the same one when resuming (resumed_step is the
    checkpoint's step, None for a fresh start). Returns where the run is, for the manifest; rank 0 only."""
    chosen = trainer.args.report_to
    backends = [b for b in ([chosen] if isinstance(chosen, str) else chosen or []) if b != "none"]
    if not backends or not trainer.is_world_process_zero():
        return None
    backend, folder = backends[0], out_dir / "tracking"
    run_id = _run_id(folder, resumed_step is not None)
    if backend == "tensorboard":
        return _tensorboard(trainer, folder / "tensorboard", resumed_step)
    name = f"{out_dir.parent.name}-{out_dir.name}-{run_id}"
    if backend == "wandb":
        os.environ.update(WANDB_RUN_ID=run_id, WANDB_RESUME="allow", WANDB_NAME=name, WANDB_DIR=str(folder))
        os.environ.setdefault("WANDB_PROJECT", "posttrain")
        return f"wandb: project {os.environ['WANDB_PROJECT']}, run id {run_id}"
    trainer.args.run_name = name  # trackio resumes a run by its name
    return f"trackio: project {trainer.args.project}, run {name}"


def _run_id(folder: Path, resuming: bool) -> str:
    path = folder / "run_id"
    if resuming and path.exists():
        return path.read_text().strip()
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(uuid.uuid4().hex[:12])
    return path.read_text()


def _tensorboard(trainer, log_dir: Path, resumed_step: int | None) -> str:
    from transformers.integrations import TensorBoardCallback

    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, TensorBoardCallback))
    if resumed_step is None:  # a fresh start is a new run: no events of an earlier attempt stay beside it
        for old in log_dir.glob("events.out.tfevents.*"):
            old.unlink()
    # purge_step: events of a killed attempt from this step on are hidden, as the resumed run logs them again
    callback.logging_dir = str(log_dir)
    purge = None if resumed_step is None else resumed_step + 1
    callback.tb_writer = callback._SummaryWriter(log_dir=str(log_dir), purge_step=purge)
    return f"tensorboard: {log_dir}"
