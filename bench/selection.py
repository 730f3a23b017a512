"""Selection benchmarks, each against a naive baseline measured in the same run.

- GRAPE scoring throughput (tokens/s): batched length-sorted scoring vs one example at a time.
- PASER clustering wall time and peak memory on synthetic 384-d embeddings: the paper's dense diffusion
  kernel + NMF spectral clustering (up to ~10^4 rows) and the landmark approximation used above that
  (10k, 100k, 1M), with the landmark clustering's agreement with the dense one (adjusted Rand index) at the
  sizes where both run.
- MinHash dedup rows/s vs exact all-pairs Jaccard on shingle sets.

Each clustering runs in a fresh process; its memory is the peak resident size above the size before it started. Run:
    OMP_NUM_THREADS=1 nice -n 10 python bench/selection.py [--sizes 10000 100000 1000000] [--dense 2000 5000]
"""
import argparse
import multiprocessing as mp
import threading
import time

import numpy as np
import psutil

DIM, TRUE_K = 384, 40


def synthetic_embeddings(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A mixture of TRUE_K Gaussian clusters on the unit sphere, like sentence embeddings of K topics."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(TRUE_K, DIM)).astype(np.float32)
    labels = rng.integers(0, TRUE_K, size=n)
    x = centres[labels] + rng.normal(scale=0.9, size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


class PeakRss:
    """The highest resident memory of this process while the block runs, sampled every 5 ms."""

    def __enter__(self):
        self.process, self.peak, self.running = psutil.Process(), 0, True
        self.start = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _cluster_job(method: str, n: int, queue) -> None:
    from posttrain.selection.paser_cluster import dense_clusters, landmark_clusters

    x, truth = synthetic_embeddings(n)
    t0 = time.perf_counter()
    with PeakRss() as rss:
        if method == "landmark":
            labels = landmark_clusters(x, TRUE_K, "fixed", TRUE_K, landmarks=1000, neighbors=5, seed=0).labels
        else:
            labels = dense_clusters(x, TRUE_K, "fixed", TRUE_K, seed=0).labels
    queue.put({"seconds": time.perf_counter() - t0, "extra_mb": (rss.peak - rss.start) / 2**20,
               "start_mb": rss.start / 2**20, "labels": labels, "truth": truth})


def run_clustering(method: str, n: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_cluster_job, args=(method, n, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def bench_paser(sizes: list[int], dense_sizes: list[int]) -> None:
    from sklearn.metrics import adjusted_rand_score

    print(f"\n## PASER clustering (K={TRUE_K} fixed, 384-d)")
    print(f"{'graph':9} {'n':>9} {'seconds':>9} {'+peak MB':>9} {'MB before':>10} {'ARI truth':>10}")
    measured = {}
    for method, ns in (("dense", dense_sizes), ("landmark", sorted(set(sizes) | set(dense_sizes)))):
        for n in ns:
            r = measured[method, n] = run_clustering(method, n)
            print(f"{method:9} {n:>9} {r['seconds']:>9.2f} {r['extra_mb']:>9.0f} {r['start_mb']:>10.0f} "
                  f"{adjusted_rand_score(r['truth'], r['labels']):>10.3f}")
    for n in dense_sizes:
        d, a = measured["dense", n], measured["landmark", n]
        print(f"n={n}: landmark vs dense clustering ARI {adjusted_rand_score(d['labels'], a['labels']):.3f}; landmark "
              f"{d['seconds'] / a['seconds']:.1f}x faster, peak extra memory {d['extra_mb'] / max(a['extra_mb'], 1):.1f}x smaller")
    for n in sizes:
        if n > max(dense_sizes, default=0):
            print(f"n={n}: dense not run; its float64 kernel matrix alone would be {8 * n * n / 2**30:,.0f} GiB")


def bench_k_search(sizes: list[int], max_clusters: int) -> None:
    """K by the NMF approximation error (the paper's rule, dense graph) on the same pools: K found and time."""
    from posttrain.selection.paser_cluster import dense_clusters

    print(f"\n## PASER K by NMF error (true K={TRUE_K}, searched in [2, {max_clusters}])")
    for n in sizes:
        x, _ = synthetic_embeddings(n)
        t0 = time.perf_counter()
        k = dense_clusters(x, None, "nmf_error", max_clusters, seed=0).k
        print(f"n={n}: K={k} in {time.perf_counter() - t0:.1f} s ({max_clusters + 1} NMFs of the {n} x {n} matrix)")


def bench_grape(n_prompts: int) -> None:
    import torch

    from posttrain.formats import candidate_examples
    from posttrain.worlds import tinyworld
    from posttrain.selection.scoring import Formatter, mean_log_probs

    torch.manual_seed(0)
    tok = tinyworld.build_tokenizer()
    model = tinyworld.build_model(tok).eval()
    fmt = Formatter(tok)
    encoded = [fmt.encode(ex, "bench") for row in tinyworld.sft_candidate_rows(n_prompts, seed=0)
               for ex in candidate_examples(row, "bench")]
    tokens = sum(len(e.ids) for e in encoded)
    print(f"\n## GRAPE scoring ({len(encoded)} candidates, {tokens} tokens, tiny-world model)")
    rates = {}
    for name, batch_size in (("one at a time", 1), ("batched, length-sorted (16)", 16)):
        t0 = time.perf_counter()
        mean_log_probs(model, encoded, batch_size, tok.pad_token_id)
        rates[name] = tokens / (time.perf_counter() - t0)
        print(f"{name:30} {rates[name]:>10.0f} tokens/s")
    print(f"batched / one at a time: {rates['batched, length-sorted (16)'] / rates['one at a time']:.1f}x")


def bench_dedup(n_rows: int, n_naive: int) -> None:
    from posttrain.worlds import tinyworld
    from posttrain.selection.filters import NearDuplicates

    texts = [r["prompt"] + "\n" + "\n".join(c["response"] for c in r["candidates"])
             for r in tinyworld.sft_candidate_rows(n_rows, seed=0)]
    dedup = NearDuplicates(threshold=0.7, num_perm=128, shingle=5)
    t0 = time.perf_counter()
    dropped = 0
    for lo in range(0, n_rows, 1024):
        dropped += sum(d is not None for d in dedup.check([str(i) for i in range(lo, lo + 1024)], texts[lo: lo + 1024]))
    minhash_rate = n_rows / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    kept: list[set] = []
    for text in texts[:n_naive]:
        s = set(dedup.shingles(text))
        if not any(len(s & k) / len(s | k) >= 0.7 for k in kept):
            kept.append(s)
    naive_rate = n_naive / (time.perf_counter() - t0)
    print(f"\n## MinHash dedup (tiny-world rows, threshold 0.7)")
    print(f"MinHash LSH: {n_rows} rows, {minhash_rate:.0f} rows/s ({dropped} near-duplicates dropped)")
    print(f"exact all-pairs Jaccard: {n_naive} rows, {naive_rate:.0f} rows/s (slows down as O(n^2))")
    print(f"MinHash / exact: {minhash_rate / naive_rate:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dense", type=int, nargs="*", default=[2_000, 5_000, 10_000])
    parser.add_argument("--k-search", type=int, nargs="*", default=[1000], help="pool sizes for the K-by-NMF-error run")
    parser.add_argument("--k-max", type=int, default=45, help="the largest K searched there")
    parser.add_argument("--only-paser", action="store_true", help="skip the GRAPE and dedup benchmarks")
    parser.add_argument("--grape-prompts", type=int, default=64)
    parser.add_argument("--dedup-rows", type=int, default=20_000)
    parser.add_argument("--dedup-naive", type=int, default=2_000)
    args = parser.parse_args()
    if not args.only_paser:
        bench_grape(args.grape_prompts)
        bench_dedup(args.dedup_rows, args.dedup_naive)
    bench_paser(args.sizes, args.dense)
    bench_k_search(args.k_search, args.k_max)


if __name__ == "__main__":
    main()
