"""Batched guard workers keep every row's outcome, limits count CPU time, and RLVR logs the share of
completions that time out, crash the verifier or hit a sandbox limit, which the report plots beside the reward."""
import json
import os
import time

import pytest

from posttrain.data import read_rows
from posttrain.eval import plots
from posttrain.rewards import Verdict, Verifier, failure_shares, get_verifier, register_verifier, score_rows
from posttrain.rewards import math_answer, math_shortcuts
from posttrain.rewards.guard import Worker
from posttrain.stages.rlvr.stage import RewardTerm, RLVRConfig, reward_functions, routed


class _Probe(Verifier):
    """Does what the completion says."""
    name = "test_probe"

    def check(self, text, row):
        if text == "spin":  # burns CPU: the worker's CPU-time limit stops it, the worker lives on
            while True:
                pass
        if text == "exit":  # kills its worker
            os._exit(3)
        if text == "nap":  # waits without CPU: within a CPU-time limit, whatever the wall clock says
            time.sleep(1.0)
        if text == "block":  # never returns and uses no CPU: only the wall-clock backstop ends it
            time.sleep(600)
        return Verdict(1.0, f"did {text}")


register_verifier("test_probe", _Probe, time_limit_s=0.3)


def test_one_batch_keeps_every_row_past_a_spin_a_dead_worker_and_a_hang():
    verifier, worker = get_verifier("test_probe"), Worker()
    try:
        texts = ["a", "spin", "b", "nap", "c", "exit", "d", "block", "e"]
        outcomes = worker.run(verifier.verify_unguarded, [((t, {}), 0.3) for t in texts])
        assert [o.status for o in outcomes] == ["ok", "timeout", "ok", "ok", "ok", "crashed", "ok", "timeout", "ok"]
        assert "CPU time" in outcomes[1].message and "wall-clock" in outcomes[7].message
        assert [o.value.reason for o in outcomes if o.ok] == ["did a", "did b", "did nap", "did c", "did d", "did e"]
        pid = worker._proc.pid
        assert [o.status for o in worker.run(verifier.verify_unguarded, [(("spin", {}), 0.3), (("a", {}), 0.3)])] == \
            ["timeout", "ok"]
        assert worker._proc.pid == pid  # a CPU timeout is answered by the worker itself: no restart
    finally:
        worker.stop()


def test_score_rows_marks_what_failed_and_failure_shares_counts_it_per_verifier():
    rows = [{"id": i} for i in range(4)]
    verdicts = score_rows(["spin", "a", "exit", "b"], rows, "test_probe", timeout_s=0.3)
    assert [(v.score, v.failure) for v in verdicts] == [(0.0, "timeout"), (1.0, ""), (0.0, "crash"), (1.0, "")]
    shares = failure_shares(verdicts + [Verdict(0.0, "x", "sandbox_limit")], ["test_probe"] * 4 + ["code"])
    assert shares == {"failures/code/timeout": 0.0, "failures/code/crash": 0.0, "failures/code/sandbox_limit": 1.0,
                      "failures/test_probe/timeout": 0.25, "failures/test_probe/crash": 0.25,
                      "failures/test_probe/sandbox_limit": 0.0}


def test_a_program_stopped_by_a_sandbox_limit_is_marked_and_a_wrong_one_is_not():
    row = {"prompt": "def sq(x):\n", "entry_point": "sq", "test": "def check(c):\n    assert c(3) == 9\n"}
    code = get_verifier("code", timeout_s=1)
    spins, wrong = (code(body, row) for body in ("    while True: pass\n", "    return x + x\n"))
    assert (spins.score, spins.failure) == (0.0, "sandbox_limit") and "CPU time limit" in spins.reason
    assert (wrong.score, wrong.failure) == (0.0, "")


def test_the_math_answer_parse_is_cpu_time_limited():
    row = {"answer": "\\frac{\\sqrt{5}-1}{2}"}
    answer = "\\boxed{\\frac{2}{1+\\sqrt{5}}}"  # equal, but not the gold's own text: it must be parsed
    assert score_rows([answer], [row], "math")[0].score == 1.0
    # A long text of the same value, not parsed before: its parse takes tens of ms, past the limit and the CPU
    # timer's tick (a short one can beat the tick once the parser's cache is warm, or be remembered)
    long_answer = "\\boxed{\\frac{2}{1+\\sqrt{5}}" + " + 0" * 40 + "}"
    starved = score_rows([long_answer], [row], "math", options={"parse_timeout_s": 0.001})[0]
    assert (starved.score, starved.failure) == (0.0, "timeout") and "CPU time limit" in starved.reason


@pytest.mark.parametrize("latex", ["0", "-0", "7", "-12", "007", "123456789012345678901234567890"])
def test_plain_integers_parse_as_math_verify_parses_them(latex):
    from math_verify import LatexExtractionConfig, parse

    ours = math_answer._parse(latex, [LatexExtractionConfig()], 60)
    theirs = parse(f"${latex}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)
    assert [(type(x), str(x)) for x in ours] == [(type(x), str(x)) for x in theirs]


def test_two_stage_latex_parsing_gives_what_ll_parsing_gives():
    from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy
    from math_verify import LatexExtractionConfig

    answers = ["(-2,1)", "\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", "\\{1\\pm\\sqrt{5},-2\\}",
               "x \\in [-2,7]", "(a+5)(b+2)", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "1,2,3", "3,333", "x^2+2x+1",
               "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\frac{1}{2} \\text{ units}", "2 \\le x < 5", "a ="]
    math_shortcuts.install()
    two_stage = [str(math_answer._parse(a, [LatexExtractionConfig()], 60)) for a in answers]
    assert _Latex2Sympy.create_parser is math_shortcuts._two_stage_create_parser  # the speed-up is in place
    with math_shortcuts.plain_math_verify():  # LL only (and math-verify's small parse caches emptied)
        assert [str(math_answer._parse(a, [LatexExtractionConfig()], 60)) for a in answers] == two_stage


def _reward_telemetry(completions: list[str], verifiers: list[str]) -> tuple[list[float], dict[str, float]]:
    cfg = RLVRConfig(model="m", data="d", rewards=[RewardTerm("verifier", 1.0)], reward_timeout_s=0.3)
    rows = [routed({"prompt": "p", "ground_truth": "5", "verifier": v, "id": i}, cfg, "f:1") for i, v in enumerate(verifiers)]
    logged: dict[str, list[float]] = {}
    (reward,), _ = reward_functions(cfg, stop_ids=[0])
    scores = reward(prompts=["p"] * len(rows), completions=completions, row_json=[json.dumps(r) for r in rows],
                    log_metric=lambda name, value: logged.setdefault(name, []).append(value))
    assert all(len(values) == 1 for values in logged.values())  # one value per key per call, as TRL averages them
    return scores, {k: v[0] for k, v in logged.items()}


def test_rlvr_reward_logs_failure_shares_per_verifier_through_trl_log_metric():
    scores, logged = _reward_telemetry(["spin", "ok", "The answer is 5.", "The answer is 4."],
                                       ["test_probe", "test_probe", "numeric", "numeric"])
    assert scores == [0.0, 1.0, 1.0, 0.0]
    assert logged == {"failures/test_probe/timeout": 0.5, "failures/test_probe/crash": 0.0,
                      "failures/test_probe/sandbox_limit": 0.0, "failures/numeric/timeout": 0.0,
                      "failures/numeric/crash": 0.0, "failures/numeric/sandbox_limit": 0.0,
                      "verifier_reward/test_probe": 0.5, "verifier_reward/numeric": 0.5}


def test_the_report_plots_failure_shares_beside_the_reward_from_metrics_jsonl(tmp_path):
    steps = [{"step": s, "reward": s / 10, "rewards/verifier/mean": s / 10, "failures/code/sandbox_limit": 0.1 * s,
              "failures/code/timeout": 0.0, "failures/math/crash": 0.05, "failures/code/other": 1.0} for s in range(5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    rows = plots.failure_totals(read_rows(tmp_path / "metrics.jsonl"))  # one line per verifier: its kinds summed
    assert [title for title, _, _ in plots.curve_panels(rows)] == ["reward", "verifier failures"]
    assert plots.curve_panels(rows)[1][2] == ["failures/code", "failures/math"]
    assert [r["failures/code"] for r in rows] == [pytest.approx(1.0 + 0.1 * s) for s in range(5)]
    assert plots.training_curves("rlvr", read_rows(tmp_path / "metrics.jsonl"), tmp_path / "with.png").exists()
