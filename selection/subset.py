"""The subset methods (random, length, perplexity, ifd, dsir, qurating, paser): a global ranking or draw over
the pool. Each streams the pool once per quantity it needs and holds one decision per row; a last pass
writes each row's audit record and the kept rows, unchanged and in input order."""
import numpy as np

from posttrain.data import DataError, iter_rows, located_rows
from posttrain.selection import baselines, scoring
from posttrain.selection.budget import gumbel_top_k, resolve
from posttrain.formats import locate, row_text
from posttrain.selection.paser import run_paser
from posttrain.selection.pool import Pool, by_rank, ranked


def run_subset(cfg, ctx, pool: Pool, size: int, out) -> dict:
    """Select from the pool's `size` rows; returns the summary's `budget` and the method's own entries."""
    budget = resolve(cfg.budget.count, cfg.budget.fraction, size)
    decisions, extra = SUBSET_METHODS[cfg.method](cfg, ctx, pool, size, budget) if size else ([], {})
    pending = iter(decisions)
    for i, row in enumerate(iter_rows(pool.path, pool.on_bad_rows)):
        base = {"index": i, "id": row.get("id")}
        if i in pool.hits:
            out.record({**base, "kept": False, **pool.hits[i]})
            continue
        d = next(pending)
        out.record({**base, "kept": d.kept, "reason": d.reason, "filter": None, **d.fields})
        if d.kept:
            out.keep(row)
    return {"budget": {"count": cfg.budget.count, "fraction": cfg.budget.fraction, "resolved": budget}, **extra}


def _random(cfg, ctx, pool: Pool, n: int, k: int):
    order = np.random.default_rng(cfg.seed).permutation(n)[:k]
    return by_rank(order, k, [{} for _ in range(n)], "not drawn"), {}


def _length(cfg, ctx, pool: Pool, n: int, k: int):
    return ranked(cfg, {"response_chars": np.array([len(e.response) for _, e in pool.examples()])}, k), {}


def _model_scores(cfg, ctx, pool: Pool, with_response_only: bool):
    """Mean response log-probs per example under `model` (and, for IFD, of the response alone)."""
    fmt, score = scoring.log_prob_scorer(cfg, ctx)

    def encode(exs, where):
        return [fmt.encode(exs[0], where)] + ([fmt.encode_response_only(exs[0], where)] if with_response_only else [])
    items = ((p, str(p), where, [ex]) for p, (where, ex) in enumerate(pool.examples()))
    scored = scoring.score_stream(items, encode, score, scoring.score_log(ctx), cfg.scoring.chunk_rows,
                                  scoring.progress(ctx))
    return np.array([r["scores"] for r in scored])


def _perplexity(cfg, ctx, pool: Pool, n: int, k: int):
    logp = _model_scores(cfg, ctx, pool, False)[:, 0]
    return ranked(cfg, {"perplexity": np.exp(-logp), "mean_logprob": logp}, k), {}


def _ifd(cfg, ctx, pool: Pool, n: int, k: int):
    logp = _model_scores(cfg, ctx, pool, True)
    score = baselines.ifd(logp[:, 0], logp[:, 1])
    decisions = ranked(cfg, {"ifd": score, "logprob_given_question": logp[:, 0], "logprob_alone": logp[:, 1]},
                       k, eligible=score <= 1)
    for d, s in zip(decisions, score):
        if s > 1:
            d.reason = "ifd > 1"
    return decisions, {}


def plain_text(row: dict, where: str) -> str:
    return row["text"] if isinstance(row.get("text"), str) else row_text(row, where)


def _dsir(cfg, ctx, pool: Pool, n: int, k: int):
    target_path = ctx.path(cfg.dsir.target)
    target = (plain_text(r, locate(where, r)) for where, r in located_rows(target_path))
    weights = baselines.dsir_log_weights((plain_text(r, w) for w, r in pool.rows()), target, cfg.dsir.buckets)
    order = gumbel_top_k(weights, k, np.random.default_rng(cfg.seed))
    return by_rank(order, k, [{"scores": {"dsir_log_weight": float(w)}} for w in weights], "not drawn"), {}


def _qurating(cfg, ctx, pool: Pool, n: int, k: int):
    key = cfg.qurating.score_key
    scores = np.empty(n)
    for p, (where, row) in enumerate(pool.rows()):
        if not isinstance(row.get(key), (int, float)) or isinstance(row.get(key), bool):
            raise DataError(f"{where}: qurating.score_key '{key}' must be a number in every row")
        scores[p] = row[key]
    order = gumbel_top_k(scores / cfg.qurating.temperature, k, np.random.default_rng(cfg.seed))
    return by_rank(order, k, [{"scores": {key: float(s)}} for s in scores], "not drawn"), {}


SUBSET_METHODS = {"random": _random, "length": _length, "perplexity": _perplexity, "ifd": _ifd, "dsir": _dsir,
                  "qurating": _qurating, "paser": run_paser}
