"""Running a training stage under accelerate or torchrun, on one machine or several.

The parent `posttrain run` pickles the stage's job, starts the launcher, and (on node 0 only) writes
the manifest. Each worker rank runs the stage; all ranks check they hold the same fingerprint first,
and rank 0 writes the headline metrics for the parent. Multi-node settings come from the usual
environment: MASTER_ADDR, MASTER_PORT, NODE_RANK (or Slurm's SLURM_NODEID), WORLD_SIZE is implied.
"""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

from posttrain.data import write_json

DEEPSPEED = {
    "zero2": {"zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True}},
    "zero3": {"zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                                    "stage3_gather_16bit_weights_on_model_save": True}},
}
AUTO = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}


class LaunchError(Exception):
    pass


def deepspeed_config(spec: str | None) -> dict | str | None:
    """zero2 / zero3 -> a config whose batch and precision follow the trainer ('auto'); else a JSON path."""
    if spec is None:
        return None
    if spec in DEEPSPEED:
        return {**AUTO, **DEEPSPEED[spec]}
    if not Path(spec).exists():
        raise LaunchError(f"deepspeed: {spec} is neither zero2, zero3 nor an existing JSON file")
    return spec


def node_rank() -> int:
    return int(os.environ.get("NODE_RANK", os.environ.get("SLURM_NODEID", "0")))


def command(launcher, job: Path) -> list[str]:
    master = ["--main_process_ip", os.environ.get("MASTER_ADDR", "127.0.0.1"),
              "--main_process_port", os.environ.get("MASTER_PORT", "29500")]
    if launcher.type == "accelerate":
        if shutil.which("accelerate") is None and not _module_exists("accelerate"):
            raise LaunchError("launcher accelerate: the accelerate package is not installed")
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
                str(launcher.num_processes * launcher.num_machines), "--num_machines", str(launcher.num_machines),
                "--machine_rank", str(node_rank()), *(master if launcher.num_machines > 1 else []),
                "--module", "posttrain.launch", str(job)]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(launcher.num_processes),
            "--nnodes", str(launcher.num_machines), "--node_rank", str(node_rank()),
            "--master_addr", os.environ.get("MASTER_ADDR", "127.0.0.1"),
            "--master_port", os.environ.get("MASTER_PORT", "29500"), "-m", "posttrain.launch", str(job)]


def _module_exists(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def run_launched(stage, config, ctx, fingerprint: str) -> dict:
    """Run `stage` under its launcher; return rank 0's metrics."""
    job = ctx.out_dir / ".job.pkl"
    result = ctx.out_dir / ".result.json"
    result.unlink(missing_ok=True)
    with open(job, "wb") as f:
        pickle.dump({"kind": stage.kind, "config": config, "ctx": ctx, "fingerprint": fingerprint}, f)
    cmd = command(config.launcher, job)
    ctx.info("launching: " + " ".join(cmd))
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", **os.environ, "PYTHONUNBUFFERED": "1"}
    if config.launcher.num_processes * config.launcher.num_machines == 1:
        # A single process gets no rank variables from the launcher; DeepSpeed would go looking for MPI.
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise LaunchError(f"the {config.launcher.type} workers exited with code {proc.returncode} (their output is above)")
    if node_rank() != 0:
        return {}
    return json.loads(result.read_text())


def _worker(job_path: str) -> None:
    import torch.distributed as dist
    from accelerate import PartialState

    import posttrain.stages  # noqa: F401
    from posttrain.stage import STAGES

    with open(job_path, "rb") as f:
        job = pickle.load(f)
    state = PartialState()  # initialises the process group from the launcher's environment
    if dist.is_available() and dist.is_initialized():
        fingerprints = [None] * dist.get_world_size()
        dist.all_gather_object(fingerprints, job["fingerprint"])
        if len(set(fingerprints)) > 1:
            raise LaunchError(f"ranks disagree on the stage fingerprint {sorted(set(fingerprints))}: "
                              "every node must run the same recipe, overrides and data")
    metrics = STAGES[job["kind"]]().run(job["config"], job["ctx"])
    if state.is_main_process:
        write_json(Path(job_path).parent / ".result.json", metrics or {})


if __name__ == "__main__":
    _worker(sys.argv[1])
