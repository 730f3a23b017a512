"""One-GPU smoke run (bench/gpu_smoke.sh, docs/gpu.md): the checks that only a GPU can settle, each printed as
PASS or FAIL with its figures, and written to $OUT/gpu_smoke.txt (or SMOKE_OUT) as they finish.

  dpo_5e-7_step   a 5e-7 DPO step in bf16 moves (nearly) every layer weight: fp32 master weights
  zero3_export    SFT under DeepSpeed ZeRO-3 (every param partitioned) exports its last checkpoint's tensors
  kill9_resume    SFT killed with SIGKILL after a checkpoint, then resumed, ends with an uninterrupted run's weights
  throughput      training tokens/s and peak GPU memory of the scaled-up model (bf16 autocast, AdamW)
  tiny_chain_bf16 the tiny recipe end to end (pretrain..report) in bf16 with a hidden-512 builtin model

SMOKE_SIZE=tiny shrinks everything for a dry run on a CPU (SMOKE_DEVICE=cpu)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZE = os.environ.get("SMOKE_SIZE", "gpu")
ARCH = {"gpu": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8, intermediate_size=1536),
        "tiny": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64)}[SIZE]
BIG = SIZE == "gpu"
WORK = Path(os.environ.get("SMOKE_WORK", "/tmp/gpu_smoke"))
OUT = Path(os.environ["SMOKE_OUT"] if os.environ.get("SMOKE_OUT") else os.environ.get("OUT") or WORK)
ZERO3_ALL_PARTITIONED = {
    "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                          "stage3_gather_16bit_weights_on_model_save": True},
}
ARCH_YAML = "{" + ", ".join(f"{k}: {v}" for k, v in ARCH.items()) + "}"
# data -> base -> sft; `SFT_EXTRA` is appended to the sft stage (a launcher, for the ZeRO-3 check).
MINI = f"""
name: smoke
stages:
  data: {{kind: tinyworld, pretrain_rows: {3000 if BIG else 300}, sft_rows: 10, rl_rows: 10}}
  base:
    kind: pretrain
    model: builtin:tiny
    data: ${{stages.data.output.pretrain}}
    architecture: {ARCH_YAML}
    max_length: 128
    train: {{learning_rate: 1.0e-3, max_steps: {60 if BIG else 8}, per_device_train_batch_size: 16, save_steps: 100, precision: PREC}}
  sft:
    kind: sft
    model: ${{stages.base.output.model}}
    data: SFT_FILE
    max_length: 160
    train: {{learning_rate: 1.0e-3, max_steps: {40 if BIG else 12}, per_device_train_batch_size: 16, save_steps: {10 if BIG else 4}, logging_steps: 1, precision: PREC}}
SFT_EXTRA"""


def precision() -> str:
    import torch

    return "bf16" if torch.cuda.is_available() else "fp32"


def record(name: str, ok: bool, detail: str) -> bool:
    line = f"{'PASS' if ok else 'FAIL'} {name}: {detail}"
    print(line, flush=True)
    with open(OUT / "gpu_smoke.txt", "a") as f:
        f.write(line + "\n")
    return ok


def tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(f))
    return state


def cli(*args, log: str, timeout: float, new_session: bool = False) -> subprocess.Popen:
    """`posttrain ...` in a subprocess, its output in OUT/logs/<log>."""
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    out = open(OUT / "logs" / log, "a")
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", *map(str, args)], stdout=out, stderr=subprocess.STDOUT,
                            cwd=WORK, start_new_session=new_session)  # not REPO: its posttrain/ would shadow the installed one
    proc.timeout = timeout
    return proc


def finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=proc.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) if proc.pid else None
        raise


def write_recipe(path: Path, sft_extra: str = "") -> Path:
    """The mini recipe, with an SFT file of the tiny world's prompts and its correct teacher's answers."""
    from posttrain.worlds import tinyworld

    path.parent.mkdir(parents=True, exist_ok=True)
    sft = path.parent / "sft.jsonl"
    with open(sft, "w") as f:
        for row in tinyworld.sft_candidate_rows(1000 if BIG else 200, seed=1):
            tutor = next(c["response"] for c in row["candidates"] if c["source"] == "tutor")
            f.write(json.dumps({"prompt": row["prompt"], "completion": tutor}) + "\n")
    path.write_text(MINI.replace("PREC", precision()).replace("SFT_EXTRA", sft_extra).replace("SFT_FILE", str(sft)))
    return path


def saved_model(tmp: Path) -> Path:
    from posttrain import hf
    from posttrain.worlds import tinyworld

    tok = tinyworld.build_tokenizer()
    hf.save_model(tinyworld.build_model(tok, seed=0, **ARCH), tok, tmp / "base")
    return tmp / "base"


def check_dpo_step() -> bool:
    import posttrain.stages  # noqa: F401
    from posttrain.schema import build
    from posttrain.stage import STAGES, Context

    tmp = WORK / "dpo_step"
    base = saved_model(tmp)
    pairs = tmp / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"What is {i} plus 1?", "chosen": f"{i + 1}", "rejected": f"{i + 2}"}) + "\n"
                             for i in range(16)))
    raw = {"model": str(base), "data": str(pairs), "max_length": 64, "precompute_ref_log_probs": False,
           "train": {"learning_rate": 5e-7, "max_steps": 1, "per_device_train_batch_size": 16, "precision": precision(),
                     "save_steps": 1, "logging_steps": 1}}
    stage, problems = STAGES["dpo"](), []
    cfg = build(stage.Config, raw, "dpo", problems, lambda s, o: "no refs")
    assert not problems and not stage.check(cfg), problems
    ctx = Context("dpo", tmp / "dpo", tmp, stage.outputs)
    ctx.out_dir.mkdir(parents=True)
    stage.run(cfg, ctx)
    before, after = tensors(base), tensors(ctx.output("model"))
    layers = [k for k in before if ".layers." in k]
    changed = sum((after[k].float() != before[k].float()).sum().item() for k in layers)
    total = sum(before[k].numel() for k in layers)
    return record("dpo_5e-7_step", changed / total > 0.9,
                  f"{changed}/{total} layer weights changed ({changed / total:.1%}; need >90%), precision {precision()}, "
                  f"exported dtype {after[layers[0]].dtype}")


def check_zero3_export() -> bool:
    tmp = WORK / "zero3"
    ds = tmp / "zero3_all.json"
    ds.parent.mkdir(parents=True, exist_ok=True)
    ds.write_text(json.dumps(ZERO3_ALL_PARTITIONED))
    recipe = write_recipe(tmp / "recipe.yaml", f"    launcher: {{type: accelerate, num_processes: 1, deepspeed: {ds}}}\n")
    code = finish(cli("run", recipe, "--out", tmp / "run", log="zero3.log", timeout=300))
    manifest = json.loads((tmp / "run" / "sft" / "manifest.json").read_text())
    if code != 0 or manifest["status"] != "complete":
        return record("zero3_export", False, f"exit {code}, status {manifest['status']}: see logs/zero3.log")
    ckpts = sorted((tmp / "run" / "sft" / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    last, out = tensors(ckpts[-1]), tensors(tmp / "run" / manifest["artifacts"]["model"])
    bad = [k for k in out if out[k].numel() == 0 or k not in last or not out[k].float().equal(last[k].float())]
    bad += sorted(last.keys() - out.keys())
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp / "run" / manifest["artifacts"]["model"])  # plain transformers
    return record("zero3_export", not bad, f"{len(out)} tensors equal {ckpts[-1].name}'s (gathered), e.g. "
                  f"embed {tuple(out['model.embed_tokens.weight'].shape)}" if not bad else f"{len(bad)} differ, e.g. {bad[0]}")


def check_kill_resume() -> bool:
    tmp = WORK / "kill"
    recipe = write_recipe(tmp / "recipe.yaml")
    run = tmp / "run"
    if finish(cli("run", recipe, "--out", run, log="kill.log", timeout=300)) != 0:
        return record("kill9_resume", False, "the uninterrupted run failed: see logs/kill.log")
    reference = tensors(run / "sft" / "model")
    shutil.rmtree(run / "sft")  # not --force: its old checkpoints would be seen before the runner removes them
    proc = cli("run", recipe, "--out", run, "--only", "sft", log="kill.log", timeout=300, new_session=True)
    killed_at, max_steps = None, 40 if BIG else 12
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        states = list((run / "sft" / "checkpoints").glob("checkpoint-*/trainer_state.json"))
        if states:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = min(states, key=lambda p: int(p.parent.name.split("-")[1])).parent.name
            break
        time.sleep(0.01)
    proc.wait()
    if killed_at is None or int(killed_at.split("-")[1]) >= max_steps:
        return record("kill9_resume", False, f"the run ended (exit {proc.returncode}, {killed_at}) before it could be killed mid-stage")
    if finish(cli("run", recipe, "--out", run, log="kill.log", timeout=300)) != 0:
        return record("kill9_resume", False, "the resumed run failed: see logs/kill.log")
    resumed = tensors(run / "sft" / "model")
    diff = max((resumed[k].float() - reference[k].float()).abs().max().item() for k in reference)
    scale = max(reference[k].float().abs().max().item() for k in reference)
    exact = diff == 0
    # GPU kernels (atomics in the embedding backward) need not be bitwise deterministic: a difference far below
    # one training step's size still shows that the resume restored weights, optimizer, scheduler and data order.
    return record("kill9_resume", exact or diff < 1e-4 * scale,
                  f"killed after {killed_at}; resumed weights {'equal (bitwise)' if exact else f'differ by max {diff:.3g} (weights up to {scale:.3g})'} "
                  "an uninterrupted run's")


def check_throughput() -> bool:
    import torch

    from posttrain import hf
    from posttrain.worlds import tinyworld

    dev = hf.device()
    model = tinyworld.build_model(tinyworld.build_tokenizer(), seed=0, **ARCH).to(dev).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch, length = (16, 512) if BIG else (2, 32)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), device=dev)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(3):
        step()
    if dev == "cuda":
        torch.cuda.synchronize()
    steps, t0 = (20 if BIG else 3), time.perf_counter()
    for _ in range(steps):
        step()
    if dev == "cuda":
        torch.cuda.synchronize()
    tps = steps * batch * length / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else float("nan")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return record("throughput", tps > 0, f"{tps:,.0f} training tokens/s, peak GPU memory {peak:.2f} GiB "
                  f"({params:.1f}M params, batch {batch}x{length}, bf16 autocast, fp32 AdamW, {dev})")


def check_tiny_chain() -> bool:
    import torch

    from posttrain.recipe import load
    from posttrain.runner import run

    prec = precision()
    over = [f"stages.base.architecture={ARCH_YAML}"] + [f"stages.{s}.train.precision={prec}" for s in ("base", "sft", "dpo", "rlvr")]
    over += (["stages.base.train.learning_rate=1.0e-3", "stages.sft.train.learning_rate=1.0e-3", "stages.pairs.limit=512",
              "stages.dpo.train.max_steps=16", "stages.rlvr.train.max_steps=20", "stages.eval.tasks=[{name: tinyworld, limit: 200}]"]
             if BIG else
             ["stages.data.pretrain_rows=300", "stages.data.sft_rows=100", "stages.data.rl_rows=64",
              "stages.base.train.max_steps=300", "stages.sft.train.max_steps=40",
              "stages.select.scoring.batch_size=50", "stages.pairs.limit=32", "stages.pairs.max_new_tokens=16",
              "stages.dpo.train.max_steps=2", "stages.dpo.train.per_device_train_batch_size=4",
              "stages.rlvr.train.max_steps=2", "stages.rlvr.train.per_device_train_batch_size=16",
              "stages.rlvr.max_completion_length=8", "stages.eval.tasks=[{name: tinyworld, limit: 20}]"])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    run(load(REPO / "recipes" / "tiny.yaml", over), WORK / "chain", echo=lambda m: print("   ", m, flush=True))
    wall = time.time() - t0
    manifests = {p.parent.name: json.loads(p.read_text()) for p in (WORK / "chain").glob("*/manifest.json")}
    incomplete = [n for n, m in manifests.items() if m["status"] != "complete"]
    times = ", ".join(f"{n} {m['wall_time_s']:.0f}s" for n, m in manifests.items() if m.get("wall_time_s") is not None)
    evals = manifests.get("eval", {}).get("metrics", {})
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return record("tiny_chain_bf16", len(manifests) == 9 and not incomplete,
                  f"{len(manifests)} stages, incomplete: {incomplete or 'none'}; {wall:.0f}s ({times}); peak GPU memory "
                  f"{peak:.2f} GiB; precision {prec}; hidden {ARCH['hidden_size']}; eval {json.dumps(evals)[:400]}")


CHECKS = {"dpo_5e-7_step": check_dpo_step, "zero3_export": check_zero3_export, "kill9_resume": check_kill_resume,
          "throughput": check_throughput, "tiny_chain_bf16": check_tiny_chain}


def environment() -> str:
    import importlib.metadata as md

    import torch

    names = ["torch", "transformers", "trl", "accelerate", "peft", "datasets", "deepspeed", "pyarrow", "posttrain"]
    versions = []
    for n in names:
        try:
            versions.append(f"{n} {md.version(n)}")
        except md.PackageNotFoundError:
            versions.append(f"{n} missing")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{gpu}; python {sys.version.split()[0]}; " + ", ".join(versions)


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu_smoke.txt").write_text(f"gpu_smoke {time.strftime('%Y-%m-%d %H:%M:%S')} size={SIZE}\n{environment()}\n")
    print(environment(), flush=True)
    only = sys.argv[1:] or list(CHECKS)
    failed, t0 = [], time.time()
    for name in only:
        t = time.time()
        print(f"--- {name}", flush=True)
        try:
            ok = CHECKS[name]()
        except Exception as e:  # one broken check must not hide the others' results
            traceback.print_exc()
            ok = record(name, False, f"{type(e).__name__}: {str(e)[:300]}")
        print(f"    ({time.time() - t:.0f}s)", flush=True)
        if not ok:
            failed.append(name)
    summary = f"{len(only) - len(failed)}/{len(only)} checks passed in {time.time() - t0:.0f}s" + (f"; FAILED: {', '.join(failed)}" if failed else "")
    record("overall", not failed, summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
