"""The report's training-curve panels: reward and verifier lines, RL diagnostics, and the routed term's logs."""
import json


def test_reward_panel_names_identical_lines_and_terms_not_verifiers():
    from posttrain.eval.plots import curve_panels, failure_totals, panel_series

    rows = failure_totals([{"step": s, "reward": s / 10, "rewards/verifier/mean": s / 10, "failures/math/timeout": 0.0,
                            "failures/math/crash": 0.1, "failures/code/timeout": 0.0, "failures/code/crash": 0.0,
                            "verifier_reward/math": s / 5, "verifier_reward/code": 0.0} for s in range(5)])
    panels = {title: panel_series(rows, keys) for title, _, keys in curve_panels(rows)}
    # the total and the one routed term are the same line: one drawn line, both named, not "verifier" alone
    assert [label for label, _ in panels["reward"]] == ["total = each row's verifier"]
    assert [label for label, _ in panels["reward per verifier"]] == ["code", "math"]
    failures = dict(panels["verifier failures"])
    assert [y for _, y in failures["math"]] == [0.1] * 5 and [y for _, y in failures["code"]] == [0.0] * 5


def test_routed_rlvr_term_logs_each_verifiers_reward():
    from posttrain.stages.rlvr.stage import RLVRConfig, reward_functions

    logged: dict[str, float] = {}
    funcs, _ = reward_functions(RLVRConfig(model="m", data="d"), stop_ids=[])
    rows = [json.dumps({"verifier": "numeric", "ground_truth": "4"}), json.dumps({"verifier": "numeric", "ground_truth": "5"}),
            json.dumps({"verifier": "math", "ground_truth": "7"})]
    scores = funcs[0](prompts=["p"] * 3, completions=["The answer is 4", "The answer is 4", "The answer is \\boxed{7}"],
                      row_json=rows, log_metric=logged.__setitem__)  # keywords, as TRL calls reward functions
    assert scores == [1.0, 0.0, 1.0]
    assert logged["verifier_reward/numeric"] == 0.5 and logged["verifier_reward/math"] == 1.0
    assert logged["failures/numeric/timeout"] == 0.0


def test_rl_diagnostics_get_panels_and_an_all_zero_share_says_so():
    from posttrain.eval.plots import SHARES, curve_panels, drawn_series, failure_totals

    rows = failure_totals([{"step": s, "frac_reward_zero_std": 0.7, "entropy": 1.5, "grad_norm": 0.3, "learning_rate": 5e-5,
                            "clip_ratio/region_mean": 0.0, "logps/chosen": -20.0, "logps/rejected": -30.0,
                            "failures/ifeval/crash": 0.0, "failures/numeric/timeout": 0.0} for s in range(3)])
    panels = {title: keys for title, _, keys in curve_panels(rows)}
    assert panels["groups with no signal"] == ["frac_reward_zero_std"] and panels["entropy"] == ["entropy"]
    assert panels["gradient norm"] == ["grad_norm"] and panels["learning rate"] == ["learning_rate"]
    assert panels["log-prob of chosen / rejected"] == ["logps/chosen", "logps/rejected"]
    assert {"verifier failures", "groups with no signal", "clipped tokens"} <= SHARES
    lines = drawn_series("verifier failures", rows, panels["verifier failures"])
    assert [label for label, _ in lines] == ["0 at every step (ifeval, numeric)"]  # not "ifeval = numeric"
