"""GRAPE (arXiv 2502.04194) and its ablations: which candidate response(s) of a prompt to keep.

- grape: the top_k candidates by mean response log-prob under the base model that will be fine-tuned.
- grape_reverse: the bottom top_k.
- random_response: top_k candidates drawn uniformly, from an RNG seeded by (seed, row index), so the draw
  of a row does not depend on the other rows, the chunking or a resume.
- single_source: the candidate of the named source (a row without one keeps nothing).

Tie-break: scores are rounded to 6 decimals (so batch composition and padding cannot reorder near-equal
scores), then equal scores go to the candidate listed first in the row.

Memory: rows are read, scored `scoring.chunk_rows` at a time, decided and written as they go, so memory does
not grow with the number of prompts.
"""
import random
from collections import Counter
from collections.abc import Iterable, Iterator

from posttrain.data import located_rows
from posttrain.selection import scoring
from posttrain.selection.quality import KeptQuality
from posttrain.formats import candidate_examples, candidates, locate, sft_row

SCORE_DECIMALS = 6
NOT_CHOSEN = {"grape": "lower base-model log-prob than the kept", "grape_reverse": "higher base-model log-prob than the kept",
              "random_response": "not drawn", "single_source": "from another source"}  # why a candidate was discarded


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


def run_candidates(cfg, ctx, path: str, hits: dict[int, dict], out) -> dict:
    """The candidate methods, streamed: scores are computed a chunk ahead of the row being decided; each row
    is written once decided. Returns the summary's `budget`, `sources` and `candidates` (counted per
    candidate response: total, kept, discarded by reason)."""
    def rows() -> Iterator[tuple[int, dict, str]]:
        for index, (where, row) in enumerate(located_rows(path, cfg.on_bad_rows)):
            yield index, row, locate(where, row)

    scored = _candidate_scores(cfg, ctx, (r for r in rows() if r[0] not in hits))
    offered, kept, discarded, quality = Counter(), Counter(), Counter(), KeptQuality()
    for i, row, where in rows():
        cands = candidates(row, where)
        sources = [c["source"] for c in cands]
        offered.update(sources)
        record = {"index": i, "id": row.get("id"), "sources": sources, "filter": None}
        if i in hits:
            out.record({**record, "kept": False, **hits[i]})
            discarded[hits[i]["reason"]] += len(cands)
            continue
        scores = next(scored)["scores"] if scored else None
        chosen = choose(cfg.method, scores, sources, cfg.grape.top_k, cfg.grape.source, cfg.seed, i)
        reason = "selected" if chosen else f"no candidate from source {cfg.grape.source}"
        out.record({**record, "kept": bool(chosen), "reason": reason, "scores": scores, "chosen": chosen})
        discarded[NOT_CHOSEN[cfg.method]] += len(cands) - len(chosen)
        row_id = str(row.get("id", i))
        for r, j in enumerate(chosen):
            kept[sources[j]] += 1
            quality.add(row, cands[j])
            out.keep(sft_row(row, cands[j], row_id if cfg.grape.top_k == 1 else f"{row_id}-{r}"))
    checked = quality.summary(ctx.info)
    return {"budget": None, "sources": {s: {"candidates": offered[s], "kept": kept[s],
                                            "verified": checked["sources"].get(s, {}).get("verified")} for s in sorted(offered)},
            "skills": checked["skills"], "verify_failed": checked["verify_failed"],
            "candidates": {"total": sum(offered.values()), "kept": sum(kept.values()), "discarded": dict(discarded)}}


def _candidate_scores(cfg, ctx, pool: Iterable[tuple[int, dict, str]]) -> Iterator[dict] | None:
    """The score rows of the pool's prompts in order, computed lazily; None for methods that score nothing."""
    if cfg.method not in ("grape", "grape_reverse"):
        return None
    fmt, score = scoring.log_prob_scorer(cfg, ctx)
    items = ((i, str(row.get("id", i)), where, candidate_examples(row, where)) for i, row, where in pool)
    return scoring.score_stream(items, lambda exs, where: [fmt.encode(e, where) for e in exs], score,
                                scoring.score_log(ctx), cfg.scoring.chunk_rows, scoring.progress(ctx))
