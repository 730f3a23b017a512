"""Verifier throughput on the real data, and the code sandbox's cost per program.

For each verifier: verifications per second
- inline: `verify_unguarded` in this process (no limits; the cost of the check itself),
- guarded: `verifier(completion, row)` one at a time (each call round-trips to a guard worker),
- pool: `score_rows` over the whole batch (guard.POOL_WORKERS workers, rows sent in chunks),
and pool / inline. Targets (issue 12): numeric >= 5,000 and math >= 300 rows/s through the pool. The math
completions are the gold solutions (an answer written as the gold is equal without a parse) and, to show
the parse's cost, each row's gold answer scored against the next row's (wrong answers, all parsed).
Then the sandbox's cost per program against a bare start of the same interpreter with the same flags
(`python3 -I -S -B -c pass`), calls interleaved so machine load hits both alike; the ratio is
sandbox / bare (target <= 1.5).

Run: OMP_NUM_THREADS=1 python bench/rewards.py [--limit N] [--only numeric math]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from posttrain.data import read_rows, shared_file
from posttrain.rewards import get_verifier, score_rows
from posttrain.rewards.guard import POOL_WORKERS
from posttrain.rewards.sandbox import SANDBOX_PYTHON, sandboxed

TARGETS = {"numeric": 5000, "math": 300}  # rows/s through the pool


def _batches(limit: int) -> dict[str, tuple[list, list]]:
    gsm8k = read_rows(shared_file("gsm8k/test.jsonl"))[:limit]
    math500 = read_rows(shared_file("math500/test.jsonl"))[:limit]
    ifeval = read_rows(shared_file("ifeval/input_data.jsonl"))[:limit]
    humaneval = read_rows(shared_file("humaneval/HumanEval.jsonl.gz"))[:limit]
    mbpp = read_rows(shared_file("mbpp/mbpp.jsonl"))[:limit]
    return {
        "numeric (GSM8K gold)": ([r["answer"] for r in gsm8k], [{**r, "verifier": "numeric"} for r in gsm8k]),
        "math (MATH-500 gold)": ([r["solution"] for r in math500], [{**r, "verifier": "math"} for r in math500]),
        # wrong answers: each is parsed and compared (a gold answer's own text is equal without parsing)
        "math (next row's answer)": ([f"\\boxed{{{r['answer']}}}" for r in math500[1:] + math500[:1]],
                                     [{**r, "verifier": "math"} for r in math500]),
        "ifeval (prompt as response)": ([r["prompt"] for r in ifeval], [{**r, "verifier": "ifeval"} for r in ifeval]),
        "code (HumanEval canonical)": ([r["canonical_solution"] for r in humaneval], [{**r, "verifier": "code"} for r in humaneval]),
        "code (MBPP reference)": ([r["code"] for r in mbpp], [{**r, "verifier": "code"} for r in mbpp]),
    }


def _rate(fn, n: int) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def bench_verifiers(limit: int, only: list[str] | None) -> None:
    print(f"{'verifier':30s} {'rows':>5s} {'inline/s':>10s} {'guarded/s':>10s} {f'pool({POOL_WORKERS})/s':>10s} "
          f"{'pool/inline':>11s}  target")
    for label, (completions, rows) in _batches(limit).items():
        name = rows[0]["verifier"]
        if only and name not in only:
            continue
        verifier = get_verifier(name)
        verifier("warm-up", rows[0])  # starts the guard worker and loads lazy imports
        score_rows(completions[:2], rows[:2])  # and the pool workers
        inline = _rate(lambda: [verifier.verify_unguarded(c, r) for c, r in zip(completions, rows)], len(rows))
        guarded = _rate(lambda: [verifier(c, r) for c, r in zip(completions, rows)], len(rows))
        pooled = _rate(lambda: score_rows(completions, rows), len(rows))
        target = f">= {TARGETS[name]:,}/s {'met' if pooled >= TARGETS[name] else 'MISSED'}" if name in TARGETS else ""
        print(f"{label:30s} {len(rows):5d} {inline:10.1f} {guarded:10.1f} {pooled:10.1f} {pooled / inline:11.2f}  {target}")


def _sandboxed_pass() -> None:
    with sandboxed("pass", [], cpu_s=3, memory_mb=1024) as proc:
        proc.wait()


def bench_sandbox(calls: int) -> None:
    bare_argv = [SANDBOX_PYTHON, "-I", "-S", "-B", "-c", "pass"]
    times: dict[str, list[float]] = {"bare": [], "sandbox": []}
    for _ in range(calls):
        for kind, call in (("bare", lambda: subprocess.run(bare_argv, check=True)), ("sandbox", _sandboxed_pass)):
            start = time.perf_counter()
            call()
            times[kind].append(time.perf_counter() - start)
    bare, sandbox = (statistics.median(times[k]) * 1000 for k in ("bare", "sandbox"))
    print(f"\nsandbox per program: {sandbox:.1f} ms; bare `{' '.join(bare_argv)}`: {bare:.1f} ms; "
          f"sandbox / bare {sandbox / bare:.2f}x (target <= 1.5; medians of {calls} interleaved calls each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300, help="rows per dataset")
    parser.add_argument("--only", nargs="*", help="verifiers to run (numeric, math, ifeval, code); default all")
    parser.add_argument("--sandbox-calls", type=int, default=40)
    args = parser.parse_args()
    bench_verifiers(args.limit, args.only)
    if not args.only or "sandbox" in args.only:
        bench_sandbox(args.sandbox_calls)


if __name__ == "__main__":
    main()
