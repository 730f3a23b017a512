"""GRAPE (arXiv 2502.04194) and its ablations: which candidate response(s) of a prompt to keep.

- grape: the top_k candidates by mean response log-prob under the base model that will be fine-tuned.
- grape_reverse: the bottom top_k.
- random_response: top_k candidates drawn uniformly, from an RNG seeded by (seed, row index), so the draw
  of a row does not depend on the other rows, the chunking or a resume.
- single_source: the candidate of the named source (a row without one keeps nothing).

Tie-break: scores are rounded to 6 decimals (so batch composition and padding cannot reorder near-equal
scores), then equal scores go to the candidate listed first in the row.
"""
import random

SCORE_DECIMALS = 6


def choose(method: str, scores: list[float] | None, sources: list[str], top_k: int, source: str | None,
           seed: int, index: int) -> list[int]:
    """Indices of the kept candidates, best first."""
    n = len(sources)
    if method in ("grape", "grape_reverse"):
        sign = -1 if method == "grape" else 1
        return sorted(range(n), key=lambda j: (sign * round(scores[j], SCORE_DECIMALS), j))[:top_k]
    if method == "random_response":
        return random.Random(f"{seed}:{index}").sample(range(n), min(top_k, n))
    if method == "single_source":
        return [j for j in range(n) if sources[j] == source][:1]
    raise ValueError(f"not a candidate-selection method: {method}")
