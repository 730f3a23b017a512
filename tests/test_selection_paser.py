"""PASER: the dense diffusion + NMF clustering and its K rule, the landmark approximation, the paper's budget
split without refill (and the kept variant with it), the efficiency, and the released code's JSD."""
import copy

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from posttrain.formats import Example
from posttrain.selection import paser, paser_cluster, scoring
from posttrain.selection.options import PaserOptions
from posttrain.worlds import tinyworld


def blobs(k: int, per: int, dim: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 4
    x = np.concatenate([c + rng.normal(size=(per, dim)) for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(k), per)


# ---------- clustering ----------

@pytest.mark.parametrize("k", [3, 8])
def test_nmf_error_finds_the_blobs_where_the_eigengap_does_not(k):
    x, truth = blobs(k, 40, seed=1 if k == 3 else 0)
    c = paser_cluster.dense_clusters(x, None, "nmf_error", 12, seed=0)
    assert c.k == k and c.k_chosen_by == "nmf_error" and c.graph == "dense"
    assert adjusted_rand_score(truth, c.labels) > 0.95
    errors = c.nmf_errors
    dip = {j: errors[j - 1] - 2 * errors[j] + errors[j + 1] for j in range(2, 13)}
    assert max(dip, key=dip.get) == k and set(errors) == set(range(1, 14))
    # the eigengap on the same graph picks another K on these pools (3 blobs: 2, 8 blobs: 5)
    assert paser_cluster.dense_clusters(x, None, "eigengap", 12, seed=0).k != k


def test_dense_fixed_k_is_used_and_labels_are_contiguous():
    x, truth = blobs(4, 30)
    c = paser_cluster.dense_clusters(x, 4, "fixed", 12, seed=0)
    assert c.k == 4 and c.k_chosen_by == "fixed" and c.nmf_errors is None
    assert sorted(set(c.labels.tolist())) == [0, 1, 2, 3]
    assert adjusted_rand_score(truth, c.labels) > 0.95
    assert c.eigenvalues[0] == pytest.approx(1.0, abs=1e-6)  # D^-1 A is stochastic: its top eigenvalue is 1


@pytest.mark.parametrize("landmarks", [1000, 60])  # every point a landmark, and far fewer landmarks
def test_landmark_eigengap_finds_well_separated_blobs(landmarks):
    x, truth = blobs(5, 80)
    c = paser_cluster.landmark_clusters(x, None, "eigengap", 12, landmarks, 5, seed=0)
    assert c.k == 5 and c.k_chosen_by == "eigengap" and c.graph == "landmark"
    assert adjusted_rand_score(truth, c.labels) > 0.95


def test_landmark_k_by_nmf_error_on_a_sample():
    x, truth = blobs(3, 40, seed=1)
    c = paser_cluster.landmark_clusters(x, None, "nmf_error", 12, 60, 5, seed=0)
    assert c.k == 3 and c.k_chosen_by == "nmf_error (sample of 120 rows)"
    assert adjusted_rand_score(truth, c.labels) > 0.95


def test_anchor_graph_rows_are_sparse_and_sum_to_one():
    x, _ = blobs(3, 50)
    z = paser_cluster.anchor_graph(x, 40, 4, seed=0)
    assert z.shape == (150, 40) and z.nnz == 150 * 4
    assert np.allclose(np.asarray(z.sum(axis=1)).ravel(), 1.0)


def test_auto_graph_is_dense_up_to_dense_max_rows():
    x, _ = blobs(3, 20)
    fixed = dict(k_rule="fixed", clusters=3)
    assert paser_cluster.cluster(x, PaserOptions(**fixed), 0).graph == "dense"  # 60 rows <= 10000
    assert paser_cluster.cluster(x, PaserOptions(**fixed, dense_max_rows=59), 0).graph == "landmark"
    assert paser_cluster.cluster(x, PaserOptions(**fixed, graph="landmark"), 0).graph == "landmark"


# ---------- budget and selection ----------

def test_select_splits_the_budget_by_degradation_with_floors_and_ranks_by_efficiency():
    labels = np.array([0] * 6 + [1] * 6)
    jsd = np.array([0.3] * 6 + [0.1] * 6)
    tokens = np.array([10, 100, 20, 1000, 10, 10, 10, 10, 10, 10, 10, 10])
    decisions, table = paser.select(labels, jsd, tokens, None, 5)
    assert [t["budget"] for t in table] == [3, 1]  # floor(3.75), floor(1.25): one row unspent
    kept = [i for i, d in enumerate(decisions) if d.kept]
    assert kept == [0, 4, 5, 6]  # cluster 0: equal JSD, so the shortest samples first (ties: row order)
    assert decisions[3].rank == 5 and decisions[3].reason == "below cluster budget"
    assert decisions[0].efficiency == pytest.approx(0.3 / np.log(10 ** 2))  # cost = tokens^2
    _, exact = paser.select(labels, jsd, tokens, None, 5, split="largest_remainder")
    assert [t["budget"] for t in exact] == [4, 1]


CCG_CASE = dict(labels=np.array([0, 0, 0, 1, 1, 1]), jsd=np.array([0.5, 0.4, 0.3, 0.2, 0.2, 0.2]),
                tokens=np.full(6, 10), concepts=[["a", "b"], ["c", "d"], ["a", "c"], ["e"], ["f"], ["g"]])


def test_ccg_rejections_leave_the_budget_unspent():
    decisions, table = paser.select(CCG_CASE["labels"], CCG_CASE["jsd"], CCG_CASE["tokens"], CCG_CASE["concepts"], 4)
    assert [t["budget"] for t in table] == [2, 1]  # floor(4 * 1.2 / 1.8), floor(4 * 0.6 / 1.8)
    assert decisions[2].reason == "below cluster budget"  # cluster 0's budget is met by rows 0 and 1
    decisions, table = paser.select(CCG_CASE["labels"], CCG_CASE["jsd"], CCG_CASE["tokens"], CCG_CASE["concepts"], 5)
    assert [t["budget"] for t in table] == [3, 1]
    assert decisions[2].reason == "ccg conflict" and decisions[2].conflict == ["a", "c"]  # joins a and c
    assert [t["selected"] for t in table] == [2, 1] and sum(d.kept for d in decisions) == 3  # no refill


def test_refill_variant_fills_the_shortfall_from_the_whole_pool():
    decisions, table = paser.select(CCG_CASE["labels"], CCG_CASE["jsd"], CCG_CASE["tokens"], CCG_CASE["concepts"], 5,
                                    split="largest_remainder", refill=True)
    assert [t["budget"] for t in table] == [3, 2]
    assert sum(d.kept for d in decisions) == 5
    assert [d.reason for d in decisions if d.kept].count("selected (refill)") == 1


# ---------- JSD as the released code computes it ----------

@pytest.fixture(scope="module")
def two_models():
    """The tiny-world model and a copy with half its weights zeroed (a crude pruning)."""
    tok = tinyworld.build_tokenizer()
    original = tinyworld.build_model(tok, seed=0).eval()
    pruned = copy.deepcopy(original)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in pruned.parameters():
            p.mul_((torch.rand_like(p) > 0.5).float())
    return original, pruned, tok


def test_summed_jsd_is_over_the_instruction_positions_only(two_models):
    a, b, tok = two_models
    prompts = [Example(({"role": "user", "content": "what is 3 plus 4"},), "7"),
               Example(({"role": "user", "content": "what is 3 plus 4"},), "seven, and a much longer answer"),
               Example(({"role": "user", "content": "write hello"},), "hello")]
    encoded = [scoring.prompt_ids(tok, ex, 64, "test") for ex in prompts]
    scores = scoring.summed_jsd(a, b, encoded, 2, scoring.pad_id(tok))  # padded batches
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)  # the response plays no part
    ids = torch.tensor([encoded[2].ids])
    by_hand = scoring.jensen_shannon(torch.log_softmax(a(ids).logits[0], -1), torch.log_softmax(b(ids).logits[0], -1))
    assert len(by_hand) == len(encoded[2].ids) > 1
    assert scores[2] == pytest.approx(by_hand.sum().item(), rel=1e-4)  # summed over every position, not averaged
    assert scoring.summed_jsd(a, a, encoded, 2, scoring.pad_id(tok)) == pytest.approx([0, 0, 0], abs=1e-6)


def test_the_defaults_are_the_papers_method():
    opts = PaserOptions()
    assert (opts.jsd, opts.k_rule, opts.graph, opts.budget_split, opts.refill, opts.concepts_per_sample) == (
        "instruction_sum", "nmf_error", "auto", "floor", False, None)  # None: every RAKE phrase is a concept
