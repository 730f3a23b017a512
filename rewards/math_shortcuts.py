"""Faster roads to math-verify's own verdict: four changes inside math-verify and its LaTeX parser, each giving
the result the library gives, for less CPU. `install()` puts them in place (once per process, before workers
fork); `plain_math_verify()` takes them out for a block, so tests/test_math_shortcuts.py can compare verdicts
with the library as it comes over MATH-500's answers.

1. **Two-stage parsing** (`create_parser`): latex2sympy's ANTLR parser predicts in SLL mode first and, only on
   a syntax error, parses again in the default LL mode: ANTLR's documented two-stage strategy, which gives the
   very tree LL gives (an SLL parse either matches LL's or reports an error). Intervals, tuples parse faster.
2. **Numbers** (`parse_number`): a run of ASCII digits becomes `sympy.Integer(int(text))`, the object
   `sympy.Number(text)` returns after running sympy's expression parser (~0.5 ms per number).
3. **Unequal answers** (`symbolic_eq`): math-verify's last resort for two expressions is `sympy_symbolic_eq`,
   `simplify(gold - answer)` and a test for zero: tens of ms on a wrong answer such as `3\\sqrt{3}/4` against
   `2`, most of the time spent on wrong answers. This first tries to show the difference is not zero:
   - both sides constant (no symbols, no floats): sympy's `evalf(strict=True)`, which returns only digits it
     has certified (else raises), evaluates the difference to a non-zero number;
   - or the difference is a rational function of its symbols (a polynomial such as `x^2+1` against `14`, with
     any constant coefficients) whose value at a fixed rational point, evaluated the same way, is non-zero.
     A rational function non-zero at one point is not the zero function, whatever its symbols' assumptions.
   `simplify` keeps an expression's value, so in both cases it cannot reach zero and math-verify's answer is
   False; this returns False without calling it. Anything else (floats, whose rounding `simplify` may cancel;
   percentages; matrices; other functions of symbols; a difference that is or may be zero) goes to
   math-verify's own `sympy_symbolic_eq`, unchanged.
4. **A number against a range** (`compare_sets`): `sympy_compare_sets` of a one-element set (an answer that
   is no set or tuple, which it wraps so) and an interval of positive length, or a union holding one, tries
   set equality by `symmetric_difference` (~20 ms) and finds none: a finite set never equals an infinite
   one, and none of its other branches (two intervals; two finite sets or tuples; an open interval against
   a pair) applies. This returns its False at once.
Each is left out when the library's internals are not the ones it was written for.
"""
from __future__ import annotations

import contextlib
import functools

POINT = (31, 37, 41, 43, 47, 53)  # symbols := these / 29: distinct, not integers, away from 0 and 1
_PATCHED: dict[str, tuple[object, object, object]] = {}  # attribute -> (its owner, the library's own, ours)


def _certified_nonzero(value) -> bool:
    import sympy

    try:
        number = value.evalf(30, strict=True)  # PrecisionExhausted where it cannot certify the digits
    except Exception:  # noqa: BLE001 - sympy may fail in many ways: then math-verify decides
        return False
    return isinstance(number, (sympy.Float, sympy.Rational)) and number != 0


def provably_unequal(a, b) -> bool:
    """True only when gold `a` minus answer `b` is certainly not zero (see the module's doc, 3)."""
    import sympy
    from sympy.matrices import MatrixBase
    from sympy.matrices.expressions import MatrixExpr

    kept_out = (sympy.Float, sympy.UnevaluatedExpr, MatrixBase, MatrixExpr)
    if not all(isinstance(x, sympy.Expr) and not isinstance(x, kept_out) and not x.has(*kept_out) for x in (a, b)):
        return False
    try:
        diff = a - b
        symbols = sorted(diff.free_symbols, key=str)
        if symbols:
            if len(symbols) > len(POINT) or diff.is_rational_function(*symbols) is not True:
                return False
            diff = diff.subs({s: sympy.Rational(p, 29) for s, p in zip(symbols, POINT)})
            if diff.free_symbols:
                return False
    except Exception:  # noqa: BLE001
        return False
    return _certified_nonzero(diff)


def symbolic_eq(a, b) -> bool:
    """math-verify's `sympy_symbolic_eq(a, b)`, without its `simplify` where the answer is provably False."""
    return False if provably_unequal(a, b) else _plain("sympy_symbolic_eq")(a, b)


def _infinite(x) -> bool:
    """x is an interval of positive length, or a union holding one (a sure sign of an infinite set)."""
    import sympy

    parts = x.args if isinstance(x, sympy.Union) else (x,)
    return any(isinstance(p, sympy.Interval) and p.measure.is_positive is True for p in parts)


def compare_sets(gold, pred, *args):
    """math-verify's `sympy_compare_sets`, False at once for a single value against a range (module's doc, 4)."""
    import sympy
    from sympy.matrices import MatrixBase
    from sympy.matrices.expressions import MatrixExpr

    for one, other in ((gold, pred), (pred, gold)):
        single = isinstance(one, sympy.Expr) and not isinstance(one, (MatrixBase, MatrixExpr))
        with contextlib.suppress(Exception):  # sympy failing: math-verify decides
            if single and _infinite(other):
                return False
    return _plain("sympy_compare_sets")(gold, pred, *args)


def _parse_number(self, text):
    """latex2sympy's `parse_number`, digits built directly (see the module's doc, 2)."""
    import sympy

    digits = text.replace(",", "")
    if digits.isascii() and digits.isdigit():
        return sympy.Integer(int(digits))
    return _plain("parse_number")(self, text)


def _two_stage_create_parser(self, latex_str):
    """latex2sympy's `create_parser`, its parser predicting in SLL mode first (see the module's doc, 1)."""
    from antlr4.atn.PredictionMode import PredictionMode

    create = _plain("create_parser")
    parser = create(self, latex_str)
    parser._interp.predictionMode = PredictionMode.SLL
    sll_math = parser.math

    def math():
        try:
            return sll_math()
        except Exception:  # noqa: BLE001 - a syntax error in SLL: LL decides, as without this
            return create(self, latex_str).math()

    parser.math = math
    return parser


def _targets() -> list[tuple[object, str, object]]:
    try:
        from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy as Converter
        from math_verify import grader
    except ImportError:
        return []
    wanted = [(Converter, "create_parser", _two_stage_create_parser), (Converter, "parse_number", _parse_number),
              (grader, "sympy_symbolic_eq", symbolic_eq), (grader, "sympy_compare_sets", compare_sets)]
    return [(owner, name, ours) for owner, name, ours in wanted if callable(getattr(owner, name, None))]


def _plain(name: str):
    return _PATCHED[name][1]


@functools.cache
def install() -> None:
    for owner, name, ours in _targets():
        _PATCHED[name] = (owner, getattr(owner, name), ours)
        setattr(owner, name, ours)


def _clear_parse_caches() -> None:
    from math_verify import parser

    for cached in (parser.parse_latex_cached, parser.parse_expr_cached, parser.extract_latex):
        cached.cache_clear()


@contextlib.contextmanager
def plain_math_verify():
    """math-verify as it comes, inside this block (its small parse caches emptied on the way in and out)."""
    install()
    for name, (owner, plain, _) in _PATCHED.items():
        setattr(owner, name, plain)
    _clear_parse_caches()
    try:
        yield
    finally:
        for name, (owner, _, ours) in _PATCHED.items():
            setattr(owner, name, ours)
        _clear_parse_caches()
