"""PASER's semantic-structural clustering of the instruction embeddings (arXiv 2502.12594, section 3.1).

dense (the paper's method, as the released code BokwaiHo/PASER defines it): a Gaussian diffusion kernel
A_ij = exp(-d_ij^2 / 2 sigma^2) on Euclidean distances (sigma: their median), the random-walk operator
D^-1 A, its top K eigenvectors V (those of the smallest eigenvalues of L = I - D^-1 A), the similarity
S = |V V^T| and an NMF S ~ W H with K components; a row's cluster is its largest entry of W. The released
code calls a symmetric eigensolver on the non-symmetric L; here V = D^-1/2 U from the symmetric
D^-1/2 A D^-1/2 U = U diag(lambda), which has the same eigenvalues and is what that call means. O(N^2)
memory: for pools up to about 10^4 rows.

K: fixed (the released code: 10), or by the NMF approximation error (the paper): for each k in
[1, max_clusters + 1], S_k = |V_k V_k^T| from the top k eigenvectors is factorised with k components and
its relative error e_k = ||S_k - W H||_F / ||S_k||_F is measured. The paper names the criterion, not the
rule; here K in [2, max_clusters] is where the error curve dips most (the largest e_k-1 - 2 e_k + e_k+1).
With K true groups V_K V_K^T is close to block-diagonal and non-negative, so K components reproduce it (e_K
dips); one eigenvector more adds within-group structure with negative entries that |.| folds and the
components cannot fit (e_K+1 jumps). The smallest error alone is not the rule: at k = 2 two merged groups
are still nearly block-diagonal (e_1 = 0: S_1 is constant). Cost: max_clusters + 1 NMFs of the N x N matrix
(bench/README.md). Or (not the paper's) the largest eigengap of D^-1 A.

landmark (for larger pools; an approximation, not the paper's): an anchor kNN graph as in large-scale
spectral clustering (Liu et al. 2010; Chen & Cai 2011). p landmarks are k-means centres of a random sample;
each point links to its r nearest landmarks with Gaussian weights, rows of the sparse N x p matrix Z summing
to 1. The affinity W = Z diag(Z^T 1)^-1 Z^T is never formed: its top eigenvectors are the left singular
vectors of B = Z diag(Z^T 1)^-1/2, from the small p x p matrix B^T B; the rows of the top K, normalised, are
clustered with k-means. K by the NMF error is then chosen by the dense rule on a random sample of
K_SAMPLE_ROWS rows. bench/selection.py measures its agreement with the dense clustering (adjusted Rand).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

LANDMARK_SAMPLE_PER_CENTRE = 20  # k-means for the landmarks runs on at most this many points per centre
LANDMARK_KMEANS_ITERATIONS = 10  # Lloyd steps from a random start: landmarks need coverage, not convergence
BLOCK_ROWS = 16384                # rows per block when computing point-landmark similarities
K_SAMPLE_ROWS = 2000              # landmark graph, K by the NMF error: rows of the dense sample that choose K
NMF_MAX_ITER = 400
DEFAULT_MAX_CLUSTERS, DEFAULT_DENSE_MAX_ROWS, DEFAULT_LANDMARKS, DEFAULT_NEIGHBORS = 30, 10000, 1000, 5


@dataclass
class Clustering:
    labels: np.ndarray
    k: int
    k_chosen_by: str            # "fixed", "nmf_error", "nmf_error (sample of N rows)" or "eigengap"
    graph: str                  # "dense" or "landmark"
    eigenvalues: list[float]    # top eigenvalues of the (approximate) random-walk operator, descending
    nmf_errors: dict[int, float] | None = None  # k -> relative NMF error, when K was chosen by it


# ---------- dense: diffusion kernel + NMF spectral clustering ----------

def diffusion_eigenvectors(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k eigenvalues (descending) and eigenvectors of D^-1 A for the Gaussian diffusion kernel A."""
    import scipy.linalg
    import scipy.sparse.linalg
    from sklearn.metrics import pairwise_distances

    d = pairwise_distances(x.astype(np.float64))
    sigma = max(float(np.median(d)), 1e-12)
    a = np.exp(-(d ** 2) / (2 * sigma ** 2))
    del d
    inv_sqrt_deg = 1.0 / np.sqrt(a.sum(axis=1))
    a *= inv_sqrt_deg[:, None]
    a *= inv_sqrt_deg[None, :]
    n, k = len(a), min(k, len(a))
    if k >= n - 1:  # the iterative solver needs k < n - 1
        values, u = scipy.linalg.eigh(a, subset_by_index=[n - k, n - 1])
    else:  # Lanczos: a few hundred products with the N x N matrix, not the O(N^3) full decomposition
        values, u = scipy.sparse.linalg.eigsh(a, k=k, which="LA", v0=np.ones(n))
    order = np.argsort(-values, kind="stable")
    return values[order], inv_sqrt_deg[:, None] * u[:, order]


def nmf_labels(v: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """NMF with as many components as v has columns, of S = |v v^T|: argmax labels and relative error."""
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    s = np.abs(v @ v.T)
    nmf = NMF(n_components=v.shape[1], init="nndsvda", max_iter=NMF_MAX_ITER, random_state=seed)
    with warnings.catch_warnings():  # not converged to tolerance within NMF_MAX_ITER: labels and errors are settled
        warnings.simplefilter("ignore", ConvergenceWarning)
        w = nmf.fit_transform(s)
    labels = np.unique(np.argmax(w, axis=1), return_inverse=True)[1]  # an empty component leaves no gap
    return labels, float(nmf.reconstruction_err_ / max(np.linalg.norm(s), 1e-12))


def dense_clusters(x: np.ndarray, k: int | None, k_rule: str, max_clusters: int, seed: int) -> Clustering:
    values, v = diffusion_eigenvectors(x, k if k_rule == "fixed" else max_clusters + 1)
    if k_rule == "fixed":
        labels, _ = nmf_labels(v[:, :k], seed)
        return Clustering(labels, k, "fixed", "dense", values.tolist())
    if k_rule == "eigengap":
        k = eigengap(values)
        labels, _ = nmf_labels(v[:, :k], seed)
        return Clustering(labels, k, "eigengap", "dense", values.tolist())
    errors, labels_of = {}, {}
    for k in range(1, min(max_clusters + 1, v.shape[1]) + 1):
        labels_of[k], errors[k] = nmf_labels(v[:, :k], seed)
    dip = {k: errors[k - 1] - 2 * errors[k] + errors[k + 1] for k in errors if k >= 2 and k + 1 in errors}
    best = max(dip, key=lambda k: (dip[k], -k)) if dip else max(errors)
    return Clustering(labels_of[best], best, "nmf_error", "dense", values.tolist(), errors)


def eigengap(values: np.ndarray) -> int:
    """The k >= 2 with the largest gap lambda_k - lambda_k+1 (values descending)."""
    gaps = values[1:-1] - values[2:]  # gaps[i] = lambda_(i+2) - lambda_(i+3), 1-based
    return int(np.argmax(gaps)) + 2 if len(gaps) else 1


# ---------- landmark: anchor kNN graph + k-means (an approximation for large pools) ----------

def anchor_graph(x: np.ndarray, landmarks: int, neighbors: int, seed: int):
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


def landmark_clusters(x: np.ndarray, k: int | None, k_rule: str, max_clusters: int, landmarks: int,
                      neighbors: int, seed: int) -> Clustering:
    import scipy.linalg
    import scipy.sparse as sp
    from sklearn.cluster import KMeans

    chosen_by, errors = k_rule, None
    if k_rule == "nmf_error":
        rng = np.random.default_rng(seed)
        sample = x[np.sort(rng.choice(len(x), size=min(len(x), K_SAMPLE_ROWS), replace=False))]
        on_sample = dense_clusters(sample, None, "nmf_error", max_clusters, seed)
        k, errors, chosen_by = on_sample.k, on_sample.nmf_errors, f"nmf_error (sample of {len(sample)} rows)"
    z = anchor_graph(x, landmarks, neighbors, seed)
    p = z.shape[1]
    b = z @ sp.diags(1.0 / np.sqrt(np.maximum(np.asarray(z.sum(axis=0)).ravel(), 1e-12)))
    gram = (b.T @ b).toarray()
    top = min((k if k_rule != "eigengap" else max_clusters) + 1, p)
    values, vectors = scipy.linalg.eigh(gram, subset_by_index=[p - top, p - 1])
    values, vectors = values[::-1].clip(min=0), vectors[:, ::-1]
    if k_rule == "eigengap":
        k = eigengap(values)
    k = min(k, len(values))
    u = (b @ vectors[:, :k]) / np.sqrt(np.maximum(values[:k], 1e-12))
    u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(u)
    return Clustering(labels, k, chosen_by, "landmark", [float(v) for v in values], errors)


def cluster(x: np.ndarray, opts, seed: int) -> Clustering:
    """The select stage's clustering under its paser options (graph, k_rule, clusters, ...; unset: the defaults)."""
    max_clusters = opts.max_clusters or DEFAULT_MAX_CLUSTERS
    if opts.graph == "dense" or (opts.graph == "auto" and len(x) <= (opts.dense_max_rows or DEFAULT_DENSE_MAX_ROWS)):
        return dense_clusters(x, opts.clusters, opts.k_rule, max_clusters, seed)
    return landmark_clusters(x, opts.clusters, opts.k_rule, max_clusters, opts.landmarks or DEFAULT_LANDMARKS,
                             opts.neighbors or DEFAULT_NEIGHBORS, seed)
