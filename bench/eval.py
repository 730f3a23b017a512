"""Eval throughput of the HF backend: examples/s for batched generation vs one prompt at a time, on the
tiny world's held-out prompts with the built-in tiny model (random weights; the work per token is what
counts). Prints both rates and their ratio, measured in the same run.

    OMP_NUM_THREADS=1 python bench/eval.py [--examples 64] [--batch-size 32] [--max-new-tokens 32]
"""
import argparse
import time

from posttrain.worlds import tinyworld
from posttrain.eval.generation import generate


def rate(model, tokenizer, prompts, batch_size: int, max_new_tokens: int) -> float:
    start = time.perf_counter()
    generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return len(prompts) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args()
    tokenizer = tinyworld.build_tokenizer()
    # initializer_range above the default, so the random model's completions vary like a trained one's.
    model = tinyworld.build_model(tokenizer, seed=0, initializer_range=0.3).eval()
    prompts = [r["prompt"] for r in tinyworld.heldout_rows(args.examples)]
    rate(model, tokenizer, prompts[:4], args.batch_size, 4)  # warm-up
    batched = rate(model, tokenizer, prompts, args.batch_size, args.max_new_tokens)
    single = rate(model, tokenizer, prompts, 1, args.max_new_tokens)
    print(f"HF backend, {args.examples} examples, {args.max_new_tokens} new tokens, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")
    print(f"batched (batch {args.batch_size}): {batched:8.1f} examples/s")
    print(f"one at a time:          {single:8.1f} examples/s")
    print(f"ratio batched / one at a time: {batched / single:.1f}x")


if __name__ == "__main__":
    main()
