"""Budgets: count/fraction, PASER's floor split, exact largest-remainder allocation, Gumbel top-k sampling."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.selection.budget import allocate, floor_split, gumbel_top_k, resolve


def test_resolve_count_fraction_and_cap():
    assert resolve(7, None, 100) == 7
    assert resolve(None, 0.1, 95) == 10   # 9.5 rounds half up
    assert resolve(None, 0.001, 50) == 1  # never zero
    assert resolve(500, None, 100) == 100


def test_floor_split_leaves_the_remainder_unspent():
    assert floor_split(10, [1, 1, 1]).tolist() == [3, 3, 3]        # 10/3 each: one row unspent
    assert floor_split(7, [0.6, 0.25, 0.15]).tolist() == [4, 1, 1]  # quotas 4.2, 1.75, 1.05: 1 unspent
    assert floor_split(10, [0.5, 0.3, 0.2]).tolist() == [5, 3, 2]   # exact shares are not lost to rounding
    assert floor_split(5, [0, 0]).tolist() == [2, 2]                # no degradation anywhere: equal split
    with pytest.raises(ValueError):
        floor_split(3, [-1, 2])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=1, max_size=12), st.integers(0, 300))
def test_floor_split_is_the_floor_of_the_proportional_share(weights, budget):
    split = floor_split(budget, weights)
    share = budget * np.array(weights) / sum(weights) if sum(weights) > 0 else np.full(len(weights), budget / len(weights))
    assert np.all(split <= share + 1e-6) and np.all(split > share - 1)
    assert budget - len(weights) < split.sum() <= budget


def test_largest_remainder_hand_cases():
    assert allocate(10, [1, 1, 1], [10, 10, 10]).tolist() == [4, 3, 3]  # leftover unit to the lowest index
    assert allocate(10, [0.5, 0.3, 0.2], [10, 10, 10]).tolist() == [5, 3, 2]
    assert allocate(7, [0.6, 0.25, 0.15], [10, 10, 10]).tolist() == [4, 2, 1]  # quotas 4.2, 1.75, 1.05
    assert allocate(10, [10, 1, 1], [2, 100, 100]).tolist() == [2, 4, 4]  # capped group's excess re-split
    assert allocate(5, [0, 0], [3, 3]).tolist() == [3, 2]  # all-zero weights: equal split


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.integers(0, 50)), min_size=1, max_size=12), st.integers(0, 300))
def test_allocation_sums_exactly_to_the_budget(groups, budget):
    weights, capacity = zip(*groups)
    alloc = allocate(budget, weights, capacity)
    assert alloc.sum() == min(budget, sum(capacity))
    assert (alloc >= 0).all() and (alloc <= np.array(capacity)).all()
    if sum(capacity) >= budget * 2 and all(c >= budget for c in capacity) and sum(weights) > 0:
        quota = budget * np.array(weights) / sum(weights)  # uncapped: within one unit of the exact quota
        assert np.all(np.abs(alloc - quota) < 1)


def test_allocation_rejects_negative_weights():
    with pytest.raises(ValueError):
        allocate(3, [-1, 2], [5, 5])


def test_gumbel_top_k_samples_without_replacement_in_proportion():
    rng = np.random.default_rng(0)
    picks = gumbel_top_k(np.log([100.0, 1.0, 1.0, 1.0]), 2, rng)
    assert len(set(picks.tolist())) == 2
    first = [gumbel_top_k(np.log([3.0, 1.0]), 1, rng)[0] for _ in range(4000)]
    assert abs(first.count(0) / 4000 - 0.75) < 0.03  # p = 3 / (3 + 1)
