"""Running a training stage under accelerate or torchrun, on one machine or several.

Node 0's `posttrain run` writes the stage's job (atomically), picks a free rendezvous port, hands the job to
the other nodes (posttrain.cluster) and starts its launcher; the others start theirs with the same job. Each
worker initialises the process group with the recipe's timeout before anything else can, runs the stage, and
global rank 0 writes the headline metrics for node 0's parent, which alone writes the manifest.
"""
import json
import os
import pickle
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import yaml

from posttrain import cluster
from posttrain.data import atomic_open, write_json
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


def check_fsdp2(launcher) -> list[tuple[str, str]]:
    """FSDP2 shards over a process group of CUDA GPUs. accelerate applies FSDP only to multi-GPU runs: on CPU, or
    in one process, it would train unsharded without a word, so those are refused rather than ignored."""
    import torch

    if launcher.deepspeed:
        return [("launcher.distributed", "fsdp2 and launcher.deepspeed both shard the model: choose one (remove "
                                         "launcher.deepspeed for FSDP2, or set distributed: ddp for ZeRO)")]
    if launcher.type == "none" or launcher.num_processes * launcher.num_machines < 2:
        return [("launcher.distributed", "fsdp2 shards the model over several processes: set launcher.type to "
                                         "accelerate or torchrun and launcher.num_processes to the GPUs per machine")]
    if not torch.cuda.is_available():
        return [("launcher.distributed", "fsdp2 needs CUDA GPUs and none is visible here (accelerate would train "
                                         "unsharded on CPU); validate and run it on the GPU machines")]
    return []


# transformers' FSDP keys (TrainingArguments.fsdp_config): FSDP2, one full HF-format state dict on save.
FSDP2_CONFIG = {"version": 2, "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT",
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "cpu_ram_efficient_loading": False}


def fsdp_args(launcher) -> dict:
    """TrainingArguments' fsdp/fsdp_config for the launcher: the Trainer builds accelerate's FSDP plugin from
    them, under accelerate launch or torchrun alike (None: set by posttrain, so train.trl_args may not)."""
    if launcher is not None and launcher.distributed == "fsdp2":
        return {"fsdp": True, "fsdp_config": dict(FSDP2_CONFIG)}
    return {"fsdp": None, "fsdp_config": None}


@contextmanager
def memory_file(data: bytes, name: str):
    """A file that lives in this process's memory (memfd) and the path its children open it by, while the
    context lasts. A killed process leaves nothing behind, where a temp folder would outlive a SIGKILL."""
    fd = os.memfd_create(name)
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
        yield Path(f"/proc/{os.getpid()}/fd/{fd}")
    finally:
        os.close(fd)


def accelerate_config(launcher, rank: int, addr: str, port: int) -> dict:
    """Our own accelerate config: the user's saved default (FSDP, fp16, dynamo, gpu_ids, ...) is never read."""
    total = launcher.num_processes * launcher.num_machines
    return {"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU" if total > 1 else "NO",
            "mixed_precision": "no", "num_machines": launcher.num_machines, "num_processes": total,
            "machine_rank": rank, "main_process_ip": addr, "main_process_port": port, "rdzv_backend": "static",
            "gpu_ids": "all", "use_cpu": False, "debug": False}


def command(launcher, job: Path, rank: int, addr: str, port: int, config: Path | None) -> list[str]:
    """The launcher's command line; every setting is explicit, so no saved default can change it. config: the
    accelerate_config file, for accelerate."""
    where = ["--machine_rank", str(rank), "--main_process_ip", addr, "--main_process_port", str(port)]
    if launcher.type == "accelerate":
        if not _module_exists("accelerate"):
            raise LaunchError("launcher accelerate: the accelerate package is not installed")
        total = launcher.num_processes * launcher.num_machines
        # Precision is the trainer's (recipe key train.precision); "no" here keeps the launcher out of it.
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                *(["--multi_gpu"] if total > 1 else []), "--mixed_precision", "no", "--dynamo_backend", "no",
                "--num_processes", str(total), "--num_machines", str(launcher.num_machines), *where,
                "--module", "posttrain.launch", str(job)]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(launcher.num_processes),
            "--nnodes", str(launcher.num_machines), "--node_rank", str(rank), "--master_addr", addr,
            "--master_port", str(port), "--max_restarts", "0", "-m", "posttrain.launch", str(job)]


def _module_exists(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def start(job: Path, launcher, rank: int, addr: str, port: int, info=print) -> int:
    """Run this node's share of the workers; their exit code."""
    # ACCELERATE_* variables would override the pinned settings in the workers (e.g. ACCELERATE_USE_FSDP).
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(MASTER_ADDR=addr, MASTER_PORT=str(port), PYTHONUNBUFFERED="1", **{PARENT: str(os.getpid())})
    if launcher.num_processes * launcher.num_machines == 1:
        # A single process gets no rank variables from the launcher; DeepSpeed would go looking for MPI.
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    config = yaml.safe_dump(accelerate_config(launcher, rank, addr, port)) if launcher.type == "accelerate" else None
    with memory_file(config.encode(), "posttrain-accelerate.yaml") if config else nullcontext() as config_path:
        cmd = command(launcher, job, rank, addr, port, config_path)
        info("launching: " + " ".join(cmd))
        return subprocess.run(cmd, env=env).returncode


def run_launched(stage, config, ctx, fingerprint: str, coordinator=None) -> tuple[dict, dict]:
    """Node 0: run `stage` under its launcher (publishing it to the other nodes); rank 0's metrics and
    what the process group was."""
    launcher = config.launcher
    job, result = ctx.out_dir / ".job.pkl", ctx.out_dir / ".result.json"
    result.unlink(missing_ok=True)
    payload = pickle.dumps({"kind": stage.kind, "config": config, "ctx": ctx, "fingerprint": fingerprint,
                            "timeout_minutes": launcher.timeout_minutes})
    with atomic_open(job) as f:
        f.buffer.write(payload)  # binary through the text wrapper: nothing else is written
    addr = cluster.master_addr() if launcher.num_machines > 1 else "127.0.0.1"
    port = cluster.free_port()
    if launcher.num_machines > 1:
        coordinator.publish({"stage": ctx.name, "job": payload, "addr": addr, "port": port,
                             "machines": launcher.num_machines})
    code = start(job, launcher, 0, addr, port, ctx.info)
    if code != 0:
        raise LaunchError(f"the {launcher.type} workers exited with code {code} (their output is above)")
    out = json.loads(result.read_text())
    return out["metrics"], out["distributed"]


def follow(follower, rank: int, echo=print) -> None:
    """A non-zero node: join each multi-machine stage node 0 publishes, until it says the run is over.
    Nothing is written here, in the run folder or elsewhere: the workers read the job from this process's memory."""
    while "end" not in (message := follower.next()):
        if rank >= message["machines"]:
            continue
        echo(f"[{message['stage']}] node {rank}: joining node 0's workers")
        job = pickle.loads(message["job"])
        with memory_file(message["job"], "posttrain-job.pkl") as path:
            code = start(path, job["config"].launcher, rank, message["addr"], message["port"], echo)
        if code != 0:
            raise LaunchError(f"stage '{message['stage']}': this node's workers exited with code {code}")
    if message["end"]:
        raise LaunchError(f"node 0 stopped: {message['end']}")


PARENT = "POSTTRAIN_PARENT_PID"  # the `posttrain run` process that started the launcher


def exit_with_parents() -> None:
    """Die (SIGKILL) as soon as this worker's launcher or the `posttrain run` above it is gone. torchrun starts
    workers in sessions of their own, out of reach of a kill of the run's process group, and a SIGKILLed parent
    cannot stop them: they would keep training and writing checkpoints into a run folder that a restart takes
    over. A daemon thread waits on pidfds (no polling, no pid reuse); a parent gone already kills it at once."""
    import select
    import signal
    import threading

    pids = {os.getppid(), *([int(os.environ[PARENT])] if PARENT in os.environ else [])}
    poller = select.poll()
    try:
        for pid in pids:
            poller.register(os.pidfd_open(pid), select.POLLIN)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        poller.poll()
        os.kill(os.getpid(), signal.SIGKILL)  # not an exit: atexit handlers could block in a collective

    threading.Thread(target=watch, name="exit-with-parents", daemon=True).start()


def process_group(timeout_minutes: int):
    """The worker's distributed state, created first so that the recipe's timeout holds (not NCCL's 10
    minutes): the trainer's Accelerator and DeepSpeed find the process group initialised and reuse it. On a
    machine without CUDA, accelerate makes a process group (gloo) only when told `cpu`; without it every
    rank would think itself the main process until the trainer starts."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(minutes=timeout_minutes))


def _worker(job_path: str) -> None:
    import posttrain.stages  # noqa: F401
    from posttrain.stage import STAGES

    with open(job_path, "rb") as f:
        job = pickle.load(f)
    state = process_group(job["timeout_minutes"])
    metrics = STAGES[job["kind"]]().run(job["config"], job["ctx"])
    if state.is_main_process:
        write_json(Path(job_path).parent / ".result.json", {"metrics": metrics or {}, "distributed": _describe(state)})
    _leave_process_group(state)


def _leave_process_group(state) -> None:
    """Every rank finishes together, then the group is destroyed: a rank that exits while another still holds
    the gloo connection dies with SIGABRT ("terminate called without an active exception"), and its node's
    launcher then fails a stage that succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        state.wait_for_everyone()
        dist.destroy_process_group()


def _describe(state) -> dict:
    """The process group the stage ran in and what the trainer's Accelerator made of the launcher, for the
    manifest (a saved accelerate default or an ACCELERATE_* variable would show here)."""
    import torch
    import torch.distributed as dist
    from accelerate.state import AcceleratorState

    info = {"world_size": 1}
    if dist.is_available() and dist.is_initialized():
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        backend = dist.distributed_c10d._get_default_group()._get_backend(device)
        info = {"world_size": dist.get_world_size(), "backend": state.backend,
                "timeout_s": backend.options._timeout.total_seconds()}
    if AcceleratorState._shared_state:  # the trainer's Accelerator exists
        accelerator = AcceleratorState()
        info.update(distributed_type=accelerator.distributed_type.value, mixed_precision=accelerator.mixed_precision,
                    dynamo=accelerator.dynamo_plugin.backend.value if accelerator.dynamo_plugin else "NO")
    return info


if __name__ == "__main__":
    exit_with_parents()  # first: importing torch and the stages takes seconds
    _worker(sys.argv[1])
