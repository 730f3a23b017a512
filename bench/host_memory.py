"""Host memory per rank while a training stage loads its model: two ranks (gloo on CPU), a scaled-down Llama
saved as safetensors, loaded by posttrain's own `load_trainable` (a) under ZeRO-3 with every parameter
partitioned (stage3_param_persistence_threshold 0), with the TRL config alive first so from_pretrained loads
partitioned, and (b) without DeepSpeed (every rank a whole fp32 copy, as the SFT/DPO stages did before
partitioned loading). Figures: each rank's resident memory before loading and its peak (VmHWM) after.

    python bench/host_memory.py [--hidden 1024 --layers 8]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

RANK = r'''
import json, os, sys
from pathlib import Path
from posttrain.launch import process_group
from posttrain.training import Launcher, TrainArgs, load_trainable, trl_config

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

state = process_group(5)
model_dir, mode, ctx_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
if mode == "zero3":  # DeepSpeed's communicator over the gloo group (on GPUs accelerate does this with NCCL)
    import deepspeed
    deepspeed.init_distributed(dist_backend="gloo")
from types import SimpleNamespace
from transformers import AutoTokenizer, TrainingArguments
import torch
tokenizer = AutoTokenizer.from_pretrained(model_dir)
train = TrainArgs(precision="bf16" if mode == "zero3" else "fp32")
launcher = Launcher(type="accelerate", num_processes=2, deepspeed=sys.argv[4] if mode == "zero3" else None)
before = rss_mb()
args = trl_config(TrainingArguments, train, SimpleNamespace(checkpoints_dir=ctx_dir), launcher)
model = load_trainable(str(model_dir), tokenizer, train, launcher)
held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters())
# VmHWM, not ru_maxrss: a child's ru_maxrss starts from its parent's at fork, and this script built the model.
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
print(json.dumps({"rank": state.process_index, "mode": mode, "before_mb": round(before), "peak_mb": round(peak),
                  "after_mb": round(rss_mb()), "params_held": held}), flush=True)
'''


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    a = p.parse_args()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from posttrain import hf
    from posttrain.worlds import tinyworld

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = tinyworld.build_tokenizer()
        config = LlamaConfig(vocab_size=32000, hidden_size=a.hidden, intermediate_size=a.hidden * 11 // 4,
                             num_hidden_layers=a.layers, num_attention_heads=8, num_key_value_heads=8,
                             tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        params = sum(p.numel() for p in model.parameters())
        hf.save_model(model, tok, tmp / "model")
        del model
        ds = tmp / "zero3.json"  # every parameter partitioned, as an 8B model's are
        ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                                  "bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto",
                                  "gradient_accumulation_steps": "auto", "train_batch_size": "auto"}))
        (tmp / "rank.py").write_text(RANK)
        print(f"model: {params / 1e6:.0f}M parameters, checkpoint {params * 2 / 2**20:.0f} MB (bf16); 2 ranks, gloo")
        print(f"{'mode':8} {'rank':>4} {'before MB':>10} {'peak MB':>8} {'peak-before':>12} {'params held':>12}")
        for mode in ("zero3", "full"):
            port = 29000 + os.getpid() % 1000
            env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "OMP_NUM_THREADS": "1", "ACCELERATE_USE_DEEPSPEED": "true" if mode == "zero3" else "false"}
            procs = [subprocess.Popen([sys.executable, str(tmp / "rank.py"), str(tmp / "model"), mode, str(tmp / "ckpt"),
                                       str(ds)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
            for proc in procs:
                out, err = proc.communicate(timeout=600)
                if proc.returncode:
                    sys.exit(err[-3000:])
                row = json.loads(out.strip().splitlines()[-1])
                print(f"{mode:8} {row['rank']:>4} {row['before_mb']:>10} {row['peak_mb']:>8} "
                      f"{row['peak_mb'] - row['before_mb']:>12} {row['params_held'] / 1e6:>11.1f}M")
    print(f"(this script's own peak: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
