"""Scores with their uncertainty: every score carries n and a 95% confidence interval (Wilson for 0/1
outcomes, a percentile bootstrap of the mean otherwise), and the unbiased pass@k estimator."""
import math
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


def wilson_ci(successes: int, n: int) -> tuple[float, float]:
    from scipy import stats

    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    data = np.asarray(values, dtype=float)
    if np.all(data == data[0]):  # no spread: every resample has the same mean
        return float(data[0]), float(data[0])
    from scipy import stats

    res = stats.bootstrap((data,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                          method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(values: Sequence[float], seed: int = 0) -> dict:
    """{"score": mean, "n", "ci": [lo, hi], "ci_method"} for per-example values (bools count as 0/1)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("cannot summarize a score over zero examples")
    binary = all(v in (0.0, 1.0) for v in values)
    lo, hi = wilson_ci(int(sum(values)), len(values)) if binary else bootstrap_ci(values, seed)
    return {"score": sum(values) / len(values), "n": len(values), "ci": [lo, hi],
            "ci_method": "wilson" if binary else "bootstrap"}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct
    (Chen et al. 2021), computed as a stable product."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
