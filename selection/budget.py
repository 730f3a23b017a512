"""Budgets: resolving count-or-fraction to a number of rows, splitting it across groups (PASER's floor
rule, or exactly by largest remainder), and sampling without replacement in proportion to exp(score) (Gumbel top-k)."""
import math

import numpy as np


def resolve(count: int | None, fraction: float | None, available: int) -> int:
    """Rows to keep: `count`, or `fraction` of the available rows rounded half up (at least 1), at most all."""
    wanted = count if count is not None else max(1, math.floor(fraction * available + 0.5))
    return min(wanted, available)


def floor_split(budget: int, weights) -> np.ndarray:
    """PASER's split (paper and released code): group k gets floor(budget * w_k / sum w), nothing more.

    The remainder of the floors is left unspent, and a share larger than its group is not passed on.
    All-zero weights (no degradation anywhere) split equally.
    """
    weights = np.asarray(weights, dtype=float)
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise ValueError("allocation weights must be finite and non-negative")
    w = weights if weights.sum() > 0 else np.ones(len(weights))
    return np.floor(budget * w / w.sum() + 1e-9).astype(int)  # 1e-9: an exact share is not lost to rounding


def allocate(budget: int, weights, capacity) -> np.ndarray:
    """Split `budget` across groups in proportion to `weights`, each at most its `capacity`.

    Largest remainder: every group gets the floor of its quota, the leftover units go to the largest
    fractional parts (ties: lower group index). A group whose share exceeds its capacity is capped and the
    excess re-split among the others, so the result sums to exactly min(budget, sum(capacity)).
    """
    weights, capacity = np.asarray(weights, dtype=float), np.asarray(capacity, dtype=int)
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise ValueError("allocation weights must be finite and non-negative")
    alloc = np.zeros(len(weights), dtype=int)
    remaining = min(budget, int(capacity.sum()))
    while remaining > 0:
        open_groups = np.flatnonzero(alloc < capacity)
        w = weights[open_groups] if weights[open_groups].sum() > 0 else np.ones(len(open_groups))
        quota = remaining * w / w.sum()
        share = np.floor(quota).astype(int)
        leftover = remaining - share.sum()
        share[np.argsort(-(quota - share), kind="stable")[:leftover]] += 1
        given = np.minimum(share, capacity[open_groups] - alloc[open_groups])
        alloc[open_groups] += given
        remaining -= int(given.sum())
    return alloc


def gumbel_top_k(log_weights, k: int, rng: np.random.Generator) -> np.ndarray:
    """k indices sampled without replacement with probability proportional to exp(log_weights)."""
    keys = np.asarray(log_weights, dtype=float) + rng.gumbel(size=len(log_weights))
    return np.argsort(-keys, kind="stable")[:k]
