"""Verifiers by name, and weighted combinations of them."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from posttrain.rewards.core import Verdict, Verifier

_FACTORIES: dict[str, tuple[Callable[..., Verifier], dict[str, Any]]] = {}


def register_verifier(name: str, factory: Callable[..., Verifier], **preset: Any) -> None:
    """Make `get_verifier(name, **options)` return `factory(**preset, **options)`."""
    if name in _FACTORIES:
        raise ValueError(f"a verifier named {name!r} is already registered")
    _FACTORIES[name] = (factory, preset)


def list_verifiers() -> list[str]:
    return sorted(_FACTORIES)


def _unknown(name: str) -> KeyError:
    close = difflib.get_close_matches(str(name), list(_FACTORIES), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return KeyError(f"unknown verifier {name!r}.{hint} Known verifiers: {', '.join(list_verifiers())}")


def get_verifier(name: str, **options: Any) -> Verifier:
    if name not in _FACTORIES:
        raise _unknown(name)
    factory, preset = _FACTORIES[name]
    try:
        return factory(**{**preset, **options})
    except TypeError as e:
        accepted = [p for p in inspect.signature(factory).parameters if p not in preset]
        raise TypeError(f"verifier {name!r}: {e}. Options it accepts: {', '.join(accepted)}") from None


def option_problems(name: str, options: dict[str, Any]) -> list[str]:
    """What is wrong with `options` for verifier `name`, read off its factory's signature without building it (a
    name it does not take would crash the first scoring with a TypeError)."""
    factory, preset = _FACTORIES[name]
    params = inspect.signature(factory).parameters
    accepted = {p for p, v in params.items() if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)}
    if any(v.kind is v.VAR_KEYWORD for v in params.values()):  # **base: the options every verifier takes
        accepted |= {p for p in inspect.signature(Verifier.__init__).parameters if p != "self"}
    accepted -= set(preset)
    return [f"{name} takes no option {key!r}" + (f" (did you mean {close[0]!r}?)" if (
        close := difflib.get_close_matches(str(key), sorted(accepted), n=1, cutoff=0.6)) else "")
            + f"; it takes: {', '.join(sorted(accepted))}" for key in options if key not in accepted]


class Weighted(Verifier):
    """score = sum(weight * term score) / sum(weights), so it stays in [0, 1]."""

    name = "weighted"

    def __init__(self, terms: list[tuple[Verifier, float]], **base: Any):
        if not terms:
            raise ValueError("weighted: give at least one term")
        if any(w < 0 for _, w in terms) or sum(w for _, w in terms) <= 0:
            raise ValueError(f"weighted: weights must be >= 0 with a positive sum, got {[w for _, w in terms]}")
        base.setdefault("time_limit_s", sum(v.time_limit_s for v, _ in terms))
        super().__init__(**base)
        self.terms = terms

    def check(self, text: str, row: dict) -> Verdict:
        total = sum(w for _, w in self.terms)
        verdicts = [(v, w, v.check(text, row)) for v, w in self.terms]
        score = sum(w * d.score for _, w, d in verdicts) / total
        return Verdict(score, "; ".join(f"{v.name}({w:g})={d.score:g} {d.reason}" for v, w, d in verdicts))


def combine(weights: dict[str, float], options: dict[str, dict] | None = None, **base: Any) -> Weighted:
    """A weighted sum of named verifiers, e.g. `combine({"numeric": 1.0, "format": 0.1, "length": 0.1},
    options={"length": {"budget_chars": 800}})`."""
    options = options or {}
    stray = set(options) - set(weights)
    if stray:
        raise ValueError(f"combine: options given for {sorted(stray)}, which have no weight")
    return Weighted([(get_verifier(name, **options.get(name, {})), float(w)) for name, w in weights.items()], **base)


register_verifier("weighted", combine)
