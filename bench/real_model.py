"""The real model's training speed: SFT, DPO and GRPO on SmolLM2-135M-Instruct (or a cut of it) through posttrain and
through plain TRL (bench/trl_reference.py), in this one process, on the same rows with the same hyperparameters.

Prints per stage: tokens/s both ways and their ratio, the model FLOPs utilisation against this machine's measured
fp32 matmul rate, peak RSS, and GRPO's time split (generation / reward / the rest of the step) from TRL's own
profiling timers.

    OMP_NUM_THREADS=1 python bench/real_model.py              # the whole model, a few steps per stage
    OMP_NUM_THREADS=1 python bench/real_model.py --layers 2   # a 2-layer cut (fast)

Model FLOPs per token: 6N for a trained token (forward and backward), 2N for a forward-only one (DPO's reference,
GRPO's generation), N the parameters that multiply each token (embedding lookups excluded, the tied head counted).
"""
import argparse
import json
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import trl_reference  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def matmul_flops(n: int = 1024, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
    return 2 * n ** 3 * done / (time.perf_counter() - start)


class Timers:
    """TRL's profiling contexts (generation, each reward function), summed by name while active."""

    def __init__(self):
        from trl.extras import profiling

        self.totals = defaultdict(float)
        original = profiling.ProfilingContext._log_metrics

        def record(ctx, duration):
            self.totals[ctx.name] += duration
            original(ctx, duration)

        profiling.ProfilingContext._log_metrics = record

    def take(self) -> dict:
        out, self.totals = dict(self.totals), defaultdict(float)
        return out


def data(tmp: Path, rows: int) -> dict[str, Path]:
    import gzip

    gsm = [json.loads(line) for line in open(SHARED / "gsm8k/train.jsonl")][:rows]
    hh = [json.loads(line) for line in gzip.open(SHARED / "hh_rlhf_harmless_base/test.jsonl.gz", "rt")][:rows]
    files = {"sft": tmp / "sft.jsonl", "dpo": tmp / "dpo.jsonl", "rlvr": tmp / "rl.jsonl"}
    files["sft"].write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["question"]},
                                                             {"role": "assistant", "content": r["answer"]}]}) + "\n" for r in gsm))
    files["dpo"].write_text("".join(json.dumps(r) + "\n" for r in hh))
    files["rlvr"].write_text("".join(json.dumps({"prompt": [{"role": "user", "content": r["question"]}],
                                                 "ground_truth": r["answer"].split("####")[-1].strip()}) + "\n" for r in gsm))
    return files


def run_posttrain(model: str, kind: str, body: str, tmp: Path) -> tuple[list[dict], Path]:
    """(metrics rows, stage folder) of a one-stage recipe run in this process."""
    from posttrain.cli import main

    recipe = tmp / f"{kind}.yaml"
    recipe.write_text(f"name: bench\nstages:\n  {kind}:\n    kind: {kind}\n    model: {model}\n{body}")
    assert main(["run", str(recipe), "--out", str(tmp / f"run-{kind}")]) == 0
    stage = tmp / f"run-{kind}" / kind
    return [json.loads(line) for line in open(stage / "metrics.jsonl")], stage


def train_seconds(rows: list[dict]) -> float:
    return next(r["train_runtime"] for r in reversed(rows) if "train_runtime" in r)


def tokens(rows: list[dict]) -> float:
    return max(r.get("num_tokens", 0) for r in rows)


GENERATION = ("transformers.generate", "transformers.generate_batch", "vLLM.generate")


def _split(timers: dict) -> tuple[float, float]:
    """(generation, reward) seconds: TRL's timers of the generate calls and of _calculate_rewards (all reward functions)."""
    return (sum(v for k, v in timers.items() if k.endswith(GENERATION)),  # names are "<Trainer class>.<block>"
            sum(v for k, v in timers.items() if k.endswith("._calculate_rewards")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=None, help="train a cut of the model with its first N layers")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--stages", nargs="+", default=["sft", "dpo", "rlvr"], choices=["sft", "dpo", "rlvr"])
    args = ap.parse_args()
    from datasets import load_from_disk
    from transformers import AutoConfig, AutoTokenizer

    from posttrain import chat_templates, packaged

    name = "builtin:smollm2-135m-instruct"
    folder = packaged.cut(name, args.layers) if args.layers else packaged.local_folder(name)
    config = AutoConfig.from_pretrained(folder)
    # q and o: h x h each; k and v: h x (h * kv_heads / heads) each; the MLP: three h x intermediate
    per_layer = 2 * config.hidden_size ** 2 * (1 + config.num_key_value_heads / config.num_attention_heads) \
        + 3 * config.hidden_size * config.intermediate_size
    n = config.num_hidden_layers * per_layer + config.hidden_size * config.vocab_size
    peak = matmul_flops()
    # the model's template has no generation markers: the TRL user marks it by hand (posttrain's copy is that template)
    marked, _ = chat_templates.training_template(AutoTokenizer.from_pretrained(folder))
    timers = Timers()
    steps, length, batch = args.steps, args.max_length, 4
    train = f"    train: {{learning_rate: 1.0e-5, max_steps: {steps}, per_device_train_batch_size: {batch}, logging_steps: 1, save_steps: {steps}}}\n"
    common = dict(learning_rate=1e-5, max_steps=steps, per_device_train_batch_size=batch)
    report = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = data(tmp, steps * batch)
        cases = {
            "sft": (f"    data: {files['sft']}\n    max_length: {length}\n" + train,
                    lambda rows: trl_reference.sft(str(folder), rows, str(tmp / "t-sft"), **common, max_length=length,
                                                   assistant_only_loss=True, chat_template=marked), 6),
            "dpo": (f"    data: {files['dpo']}\n    max_length: {length}\n" + train,
                    lambda rows: trl_reference.dpo(str(folder), rows, str(tmp / "t-dpo"), **common, max_length=length,
                                                   beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True), 8),
            "rlvr": (f"    data: {files['rlvr']}\n    rewards: [{{name: numeric}}]\n    num_generations: 4\n"
                     f"    max_completion_length: 64\n" + train,
                     lambda rows: trl_reference.grpo(str(folder), rows, str(tmp / "t-grpo"), **common, num_generations=4,
                                                     max_completion_length=64, beta=0.0, loss_type="dapo"), None),
        }
        for kind in args.stages:
            body, reference, flops_per_token = cases[kind]
            rows, stage = run_posttrain(str(folder), kind, body, tmp)
            ours_timers = timers.take()
            if kind == "rlvr":
                prepared = [json.loads(line) for line in open(files["rlvr"])]
            else:
                prepared = load_from_disk(str(stage / "dataset")).to_list()
            trainer = reference(prepared)
            theirs_timers = timers.take()
            ours_tps = tokens(rows) / train_seconds(rows)
            theirs_tps = tokens(trainer.state.log_history) / trainer.train_seconds
            line = {"stage": kind, "posttrain_tokens_per_s": round(ours_tps, 1), "trl_tokens_per_s": round(theirs_tps, 1),
                    "ratio": round(ours_tps / theirs_tps, 3)}
            if flops_per_token:
                line["mfu"] = round(flops_per_token * n * ours_tps / peak, 3)
            else:  # GRPO: where its time goes, both ways
                (gen, reward), (trl_gen, trl_reward) = _split(ours_timers), _split(theirs_timers)
                rest = train_seconds(rows) - gen - reward
                line.update(generation_s=round(gen, 1), reward_s=round(reward, 2), rest_s=round(rest, 1),
                            trl_generation_s=round(trl_gen, 1), trl_reward_s=round(trl_reward, 2))
            report.append(line)
    print(f"model: {name}{f' cut to {args.layers} layers' if args.layers else ''}, {n / 1e6:.1f}M multiplying parameters; "
          f"fp32 matmul {peak / 1e9:.1f} GFLOP/s on one thread; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    for line in report:
        print(json.dumps(line))


if __name__ == "__main__":
    main()
