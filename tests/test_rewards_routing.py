"""Reward terms are scored by the verifier they name; only the `verifier` term routes by the row's column."""
import pytest

from posttrain.rewards import score_rows
from posttrain.stages.rlvr.stage import RewardTerm, RLVRConfig, reward_functions, routed

LENGTH = {"budget_chars": 20, "zero_at_chars": 100}


def test_a_named_term_ignores_the_row_verifier_column():
    # issue 18's reproduction: the row says numeric, the term says length; length must score it
    row = {"id": "r", "ground_truth": "5", "verifier": "numeric"}
    verdict = score_rows(["abcdef"], [row], "length", options={"budget_chars": 4, "zero_at_chars": 100})[0]
    assert verdict.score == pytest.approx(1 - 2 / 96) and "chars" in verdict.reason
    # a correctness term whose name disagrees with the column: the term's name wins
    assert score_rows(["\\boxed{5}"], [row], "math")[0].reason.startswith("equivalent")
    assert score_rows(["\\boxed{5}"], [row])[0].score == 1.0  # routed: numeric reads the 5 too


def test_routed_correctness_and_length_terms_are_separate_series_summed_by_weight():
    cfg = RLVRConfig(model="m", data="d", rewards=[RewardTerm("verifier", 1.0), RewardTerm("length", 0.5, LENGTH)])
    rows = [routed({"prompt": "p", "ground_truth": "5", "verifier": v}, cfg, "f:1") for v in ("numeric", "numeric", "math")]
    completions = ["The answer is 5.", "The answer is 5." + " so" * 20, "The answer is 4."]
    funcs, weights = reward_functions(cfg, stop_ids=[0])
    import json

    series = {f.__name__: f(prompts=["p"] * 3, completions=completions, row_json=[json.dumps(r) for r in rows])
              for f in funcs}
    assert list(series) == ["verifier", "length"] and weights == [1.0, 0.5]
    assert series["verifier"] == [1.0, 1.0, 0.0]
    assert series["length"][0] == 1.0 and series["length"][2] == 1.0 and series["length"][1] < 0.8
    assert series["verifier"] != series["length"]
    # TRL's total reward is the weighted sum of the per-term series
    total = [sum(w * series[f.__name__][i] for f, w in zip(funcs, weights)) for i in range(3)]
    assert total == pytest.approx([1.5, 1.0 + 0.5 * series["length"][1], 0.5])
