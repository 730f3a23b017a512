"""Verifier throughput on the real data, and the code sandbox's per-call overhead.

For each verifier: verifications per second
- inline: `verify_unguarded` in this process (no time limit; the cost of the check itself),
- guarded: `verifier(completion, row)` one at a time (each call round-trips to a guard worker),
- pool: `score_rows` over the whole batch (a pool of guard.POOL_WORKERS workers).
Then the sandbox's cost per call as a ratio against a bare `subprocess.run([sys.executable, "-c", "pass"])`.

Run: OMP_NUM_THREADS=1 python bench/rewards.py [--limit N]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from posttrain.data import read_rows, shared_file
from posttrain.rewards import get_verifier, score_rows
from posttrain.rewards.guard import POOL_WORKERS
from posttrain.rewards.sandbox import run_python


def _batches(limit: int) -> dict[str, tuple[list, list]]:
    gsm8k = read_rows(shared_file("gsm8k/test.jsonl"))[:limit]
    math500 = read_rows(shared_file("math500/test.jsonl"))[:limit]
    ifeval = read_rows(shared_file("ifeval/input_data.jsonl"))[:limit]
    humaneval = read_rows(shared_file("humaneval/HumanEval.jsonl.gz"))[:limit]
    mbpp = read_rows(shared_file("mbpp/mbpp.jsonl"))[:limit]
    return {
        "numeric (GSM8K gold)": ([r["answer"] for r in gsm8k], [{**r, "verifier": "numeric"} for r in gsm8k]),
        "math (MATH-500 gold)": ([r["solution"] for r in math500], [{**r, "verifier": "math"} for r in math500]),
        "ifeval (prompt as response)": ([r["prompt"] for r in ifeval], [{**r, "verifier": "ifeval"} for r in ifeval]),
        "code (HumanEval canonical)": ([r["canonical_solution"] for r in humaneval], [{**r, "verifier": "code"} for r in humaneval]),
        "code (MBPP reference)": ([r["code"] for r in mbpp], [{**r, "verifier": "code"} for r in mbpp]),
    }


def _rate(fn, n: int) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def bench_verifiers(limit: int) -> None:
    print(f"{'verifier':30s} {'rows':>5s} {'inline/s':>10s} {'guarded/s':>10s} {f'pool({POOL_WORKERS})/s':>10s}")
    for label, (completions, rows) in _batches(limit).items():
        verifier = get_verifier(rows[0]["verifier"])
        verifier("warm-up", rows[0])  # starts the guard worker and loads lazy imports
        score_rows(completions[:20], rows[:20])  # and the pool workers
        inline = _rate(lambda: [verifier.verify_unguarded(c, r) for c, r in zip(completions, rows)], len(rows))
        guarded = _rate(lambda: [verifier(c, r) for c, r in zip(completions, rows)], len(rows))
        pooled = _rate(lambda: score_rows(completions, rows), len(rows))
        print(f"{label:30s} {len(rows):5d} {inline:10.1f} {guarded:10.1f} {pooled:10.1f}")


def bench_sandbox(calls: int) -> None:
    bare = _rate(lambda: [subprocess.run([sys.executable, "-c", "pass"], check=True) for _ in range(calls)], calls)
    sandboxed = _rate(lambda: [run_python("pass") for _ in range(calls)], calls)
    print(f"\nsandbox per call: {1000 / sandboxed:.1f} ms; bare subprocess.run(python -c pass): {1000 / bare:.1f} ms; "
          f"ratio {bare / sandboxed:.2f}x ({calls} calls each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300, help="rows per dataset")
    parser.add_argument("--sandbox-calls", type=int, default=30)
    args = parser.parse_args()
    bench_verifiers(args.limit)
    bench_sandbox(args.sandbox_calls)


if __name__ == "__main__":
    main()
