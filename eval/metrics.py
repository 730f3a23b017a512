"""Scores with their uncertainty: every score carries n and a 95% confidence interval (Wilson for 0/1
outcomes, a percentile bootstrap of the mean otherwise), the unbiased pass@k estimator, and the one rounding
of every score and difference the report and the README's tables print (`points`)."""
import math
from decimal import ROUND_HALF_UP, Decimal
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


def points(x: float, signed: bool = False) -> str:
    """x (percentage points) to one decimal: half away from zero, after dropping float noise below 1e-9. The
    report, bench/readme_numbers.py and bench/demo_seeds.py all print through it, each a difference of unrounded
    means rounded once. Ties are common (a mean of 200 0/1 items is a multiple of 0.5 points, of four skills a
    multiple of 0.125), and the same 2.75 computed two ways is 2.75 or 2.749999999999997, which Python's own
    formatting (half to even, on the binary value) printed as +2.8 in the README and +2.7 in the report."""
    rounded = Decimal(f"{x:.9f}").quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    if rounded == 0:
        rounded = abs(rounded)  # no "-0.0"
    return f"{rounded:+}" if signed else f"{rounded}"
