"""`score_rows`: verify a batch with one named verifier, or each row by its own `verifier` column, in worker
processes with per-row limits."""
from __future__ import annotations

from posttrain.rewards.core import FAILURES, Verdict, Verifier, failed, log
from posttrain.rewards.guard import shared_pool
from posttrain.rewards.registry import get_verifier, list_verifiers


class VerifierFailure(RuntimeError):
    """Too many rows of a batch could not be verified (errors, timeouts, crashes): stop, don't train."""


def _options_by_name(verifier: str | None, options: dict | None) -> dict[str, dict]:
    """options is either {verifier name: kwargs} or the kwargs of the `verifier` argument."""
    if not options:
        return {}
    known = set(list_verifiers())
    if all(key in known for key in options):
        return options
    if verifier is None:
        raise ValueError(f"options {sorted(options)} must be keyed by verifier name when rows choose their "
                         f"verifier (e.g. {{'numeric': {{'extract': ['answer_is']}}}})")
    return {verifier: options}


def _verifiers_for(rows: list[dict], verifier: str | None, options: dict | None) -> list[Verifier]:
    names = []
    for index, row in enumerate(rows):
        # A named verifier scores every row; only verifier=None routes by the row's column.
        name = verifier or row.get("verifier")
        if not name:
            raise ValueError(f"row {index} (id={row.get('id')!r}) has no 'verifier' field and no verifier "
                             f"was named; known verifiers: {', '.join(list_verifiers())}")
        names.append(name)
    by_name = _options_by_name(verifier, options)
    built = {name: get_verifier(name, **by_name.get(name, {})) for name in set(names)}
    return [built[name] for name in names]


def bad_rows(rows: list[dict], verifier: str | None = None, options: dict | None = None) -> list[tuple[int, str]]:
    """(index, why) for each row its verifier cannot score any completion for (a field it reads is missing or
    malformed), found as training finds it: an empty completion scored in the reward workers (a check never runs in
    this process, which forks them). The code verifier's check would run the row's tests, so for its rows only the
    fields are looked at. `verifier`, `options`: as score_rows takes them."""
    found, scored = [], []
    for index, row in enumerate(rows):
        if (verifier or row.get("verifier")) != "code":
            scored.append(index)
        elif not ((row.get("entry_point") and row.get("test")) or row.get("test_list")):
            found.append((index, f"the code verifier needs HumanEval fields (prompt, test, entry_point) or MBPP's "
                                 f"test_list; the row has: {', '.join(sorted(row)[:8])}"))
    verdicts = score_rows([""] * len(scored), [rows[i] for i in scored], verifier, max_failure_fraction=1.0,
                          options=options) if scored else []
    found += [(i, v.reason) for i, v in zip(scored, verdicts) if v.failure == "bad_row"]
    return sorted(found)


def score_rows(completions: list, rows: list[dict], verifier: str | None = None, *, timeout_s: float = 5.0,
               max_failure_fraction: float = 0.5, options: dict | None = None) -> list[Verdict]:
    """One Verdict per (completion, row), in order.

    With `verifier` named, every row is scored by it and a row's own `verifier` column is ignored (a
    shaping term such as `length` must never be replaced by the row's correctness verifier). With
    `verifier=None`, each row goes to the verifier its `verifier` column names (mixed data such as
    Tülu 3's), and a row without one is a ValueError. A row whose check raises,
    overruns its limit or kills its worker scores 0 with the reason and `failure` set, and is logged with its
    row id. The limit is `timeout_s` CPU seconds, or the verifier's own `time_limit_s` when that is longer,
    with guard.py's wall-clock backstop; rows go to the workers in chunks (one round trip for many rows).
    When more than `max_failure_fraction` of the batch failed that way, raises VerifierFailure.
    `options`: keyword arguments for the `verifier` argument's verifier, or a dict keyed by verifier
    name ({"numeric": {...}, "code": {"timeout_s": 2}}).
    """
    if len(completions) != len(rows):
        raise ValueError(f"score_rows: {len(completions)} completions but {len(rows)} rows")
    if not rows:
        return []
    verifiers = _verifiers_for(rows, verifier, options)
    limits = [max(timeout_s, v.time_limit_s) for v in verifiers]
    outcomes = shared_pool().map(Verifier.verify_unguarded, list(zip(verifiers, completions, rows)), limits)
    verdicts, failures = [], []
    for index, (v, row, outcome) in enumerate(zip(verifiers, rows, outcomes)):
        if outcome.ok:
            verdicts.append(outcome.value)
            continue
        verdict = failed(outcome.status, outcome.message, outcome.row_error, who=v.name)
        log.warning("row %d (id=%r): %s", index, row.get("id"), verdict.reason)
        failures.append(f"row {index} (id={row.get('id')!r}): {verdict.reason}")
        verdicts.append(verdict)
    if len(failures) > max_failure_fraction * len(rows):
        raise VerifierFailure(
            f"{len(failures)} of {len(rows)} rows could not be verified (more than max_failure_fraction="
            f"{max_failure_fraction:g}); refusing to score this batch. First failures: " + "; ".join(failures[:3]))
    return verdicts


def failure_shares(verdicts: list[Verdict], names: list[str]) -> dict[str, float]:
    """{"failures/<verifier>/<kind>": share of that verifier's completions} for each verifier in `names` (the
    verifier of each verdict) and each kind in core.FAILURES, zeros included, so a step without failures
    reads 0 rather than a gap. What RLVR logs to see reward hacking as it happens."""
    shares = {}
    for name in sorted(set(names)):
        mine = [v for v, n in zip(verdicts, names) if n == name]
        for kind in FAILURES:
            shares[f"failures/{name}/{kind}"] = sum(v.failure == kind for v in mine) / len(mine)
    return shares
