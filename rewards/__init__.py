"""Verifiable rewards: named verifiers that score a model completion against a row's ground truth.

    from posttrain.rewards import Verdict, get_verifier, list_verifiers, score_rows, VerifierFailure

    v = get_verifier("numeric", extract=["answer_is"])     # unknown name -> KeyError with a did-you-mean
    v("... The answer is 42.", {"ground_truth": "42"})       # Verdict(score=1.0, reason="correct: 42 (answer_is)")
    score_rows(completions, rows, "numeric")                 # every row scored by `numeric`
    score_rows(completions, rows)                            # each row by the verifier its row["verifier"] names

Verifiers (see each module's docstring for the row fields it reads and its options):
- `numeric` (alias `gsm8k`): final number vs `ground_truth` or GSM8K's `#### N`      (numeric.py)
- `math`: \\boxed{} / "final answer is" vs `ground_truth`/`answer`, by math-verify, one visible value
  (math_answer.py, math_screen.py; what it refuses: docs/rewards.md)
- `ifeval` (strict), `ifeval_loose`: the 25 IFEval instruction types, or open-instruct's `func_name` JSON
  (Tülu 3's RLVR mixture, ifeval_functions.py); `ifeval_details`
  gives per-instruction results                                                          (ifeval.py)
- `ifeval_words`: `ifeval` and the words `ground_truth` lists, in its order (a format applied to given
  content, as the tiny world's format skill asks)                                        (ifeval_words.py)
- `code`: HumanEval / MBPP tests run here against the completion's functions, served from a
  bubblewrap sandbox over a literal-only channel (why that is sound: code_exec.py) (remote.py, sandbox.py)
- shaping terms `format`, `eos`, `length`                                                (shaping.py)

Weighted combinations: `combine({"numeric": 1.0, "format": 0.2}, options={"format": {"require": "answer_is"}})`,
or by name, `get_verifier("weighted", weights={...}, options={...})`, gives a verifier whose score is
sum(weight * term score) / sum(weights) (so it stays in [0, 1]) and whose reason lists every term.

Every verifier accepts a str or a chat message list (TRL's conversational format), refuses completions
over `max_chars` (50,000) with score 0, and runs under a CPU-time limit (`time_limit_s`, with a wall-clock
backstop) in a forked worker process (guard.py). A verifier never raises for bad model output; it raises
RowError (a ValueError) for a row that lacks the fields it needs. A Verdict that is no verdict (a timeout,
a crashed verifier, a program stopped by a sandbox limit) says so in `failure`; `failure_shares` gives their
share per verifier, which RLVR logs. `register_verifier(name, factory)` adds one.
"""
from posttrain.rewards import code_exec, ifeval, ifeval_words, math_answer, numeric, shaping  # noqa: F401 - they register
from posttrain.rewards.batch import VerifierFailure, failure_shares, bad_rows, score_rows
from posttrain.rewards.core import RowError, Verdict, Verifier
from posttrain.rewards.ifeval import ifeval_details
from posttrain.rewards.registry import combine, get_verifier, list_verifiers, register_verifier

__all__ = ["Verdict", "Verifier", "RowError", "VerifierFailure", "get_verifier", "list_verifiers", "score_rows", "failure_shares", "bad_rows",
           "combine", "register_verifier", "ifeval_details"]
