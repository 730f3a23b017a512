"""PASER: clustering on the landmark kNN graph, automatic K, budget split and efficiency ranking."""
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from posttrain.selection import paser


def blobs(k: int, per: int, dim: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 4
    x = np.concatenate([c + rng.normal(size=(per, dim)) for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(k), per)


@pytest.mark.parametrize("landmarks", [1000, 60])  # every point a landmark, and far fewer landmarks
def test_eigengap_finds_the_blobs(landmarks):
    x, truth = blobs(5, 80)
    c = paser.spectral_clusters(x, None, 12, landmarks, 5, seed=0)
    assert c.k == 5 and c.k_chosen_by == "eigengap"
    assert adjusted_rand_score(truth, c.labels) > 0.95
    assert c.eigenvalues[0] == pytest.approx(1.0, abs=1e-6)  # W is stochastic: the top eigenvalue is 1
    assert all(a >= b - 1e-9 for a, b in zip(c.eigenvalues, c.eigenvalues[1:]))


def test_anchor_graph_rows_are_sparse_and_sum_to_one():
    x, _ = blobs(3, 50)
    z = paser.anchor_graph(x, 40, 4, seed=0)
    assert z.shape == (150, 40) and z.nnz == 150 * 4
    assert np.allclose(np.asarray(z.sum(axis=1)).ravel(), 1.0)


def test_fixed_k_is_used():
    x, _ = blobs(4, 40)
    assert paser.spectral_clusters(x, 3, 12, 1000, 5, seed=0).k == 3


def test_select_splits_the_budget_by_degradation_and_ranks_by_efficiency():
    labels = np.array([0] * 6 + [1] * 6)
    jsd = np.array([0.3] * 6 + [0.1] * 6)
    tokens = np.array([10, 100, 20, 1000, 10, 10, 10, 10, 10, 10, 10, 10])
    decisions, table = paser.select(labels, jsd, tokens, None, 4)
    assert [t["budget"] for t in table] == [3, 1] and sum(t["selected"] for t in table) == 4
    kept = [i for i, d in enumerate(decisions) if d.kept]
    # cluster 0: equal JSD, so the shortest samples are the most efficient (ties: row order)
    assert kept == [0, 4, 5, 6]
    assert decisions[3].rank == 5 and decisions[3].reason == "below cluster budget"
    assert decisions[0].efficiency == pytest.approx(0.3 / np.log(10))


def test_ccg_rejections_are_refilled_to_the_exact_budget():
    labels = np.array([0, 0, 0, 1, 1, 1])
    jsd = np.array([0.5, 0.4, 0.3, 0.2, 0.2, 0.2])
    tokens = np.full(6, 10)
    concepts = [["a", "b"], ["c", "d"], ["a", "c"], ["e"], ["f"], ["g"]]  # row 2 joins a and c: conflict
    decisions, table = paser.select(labels, jsd, tokens, concepts, 4)
    assert [t["budget"] for t in table] == [3, 1]
    assert decisions[2].reason == "ccg conflict" and decisions[2].conflict == ["a", "c"]
    assert sum(d.kept for d in decisions) == 4
    assert [d.reason for d in decisions if d.kept].count("selected (refill)") == 1
