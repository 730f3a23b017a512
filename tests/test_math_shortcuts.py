"""The math verifier's shortcuts (rewards/math_shortcuts.py; in math_answer.py the gold's own text, plain
integers and remembered pairs) give plain math-verify's verdicts and parses, on MATH-500's answers and on
variants chosen to sit near each shortcut's edge. posttrain's own rules (math_screen.py: the whole answer must
parse; no stray relation, hidden text, several candidates...) refuse some answers plain math-verify accepts:
the contract is plain math-verify's verdict on every answer those rules do not refuse, and no honest form of a
MATH-500 answer (its own text, a restatement) refused."""
import pytest
import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from posttrain.data import read_rows, shared_file
from posttrain.rewards import math_answer, math_shortcuts
from posttrain.rewards.math_screen import literal_percent, refusal
from test_rewards_load import restate

# (gold, answer): equal and unequal, near each shortcut's edge
VARIANTS = [
    ("\\frac{1}{2}", "0.5"), ("0.5", "\\frac{1}{2}"), ("-\\frac{3}{4}", "-0.75"), ("\\frac{4}{2}", "2"),
    ("\\frac{3\\sqrt{3}}{4}", "\\frac{3}{4}\\sqrt{3}"), ("\\frac{3\\sqrt{3}}{4}", "1.299038"), ("\\frac{3\\sqrt{3}}{4}", "2"),
    ("\\sqrt{2}+\\sqrt{3}", "\\sqrt{5+2\\sqrt{6}}"), ("\\frac{\\sqrt{5}-1}{2}", "\\frac{2}{1+\\sqrt{5}}"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("2\\sqrt{2}", "\\sqrt{9}"), ("\\pi", "3.14159265"), ("\\pi", "3.14"), ("3", "\\pi"),
    ("x^2+2x+1", "(x+1)^2"), ("x^2+2x+1", "(x+1)^3"), ("x^2+2x+1", "14"), ("\\frac{x^2-1}{x-1}", "x+1"),
    ("\\frac{1}{x}", "x^{-1}"), ("\\frac{1}{x}", "x"), ("n^2", "n \\cdot n"), ("a+b", "b+a"), ("a+b", "a+2b"),
    ("\\sin^2 x + \\cos^2 x", "1"), ("\\sin x", "\\cos x"), ("e^{i\\pi}", "-1"), ("\\ln 8", "3\\ln 2"), ("\\log_2 8", "3"),
    ("10\\%", "10"), ("10\\%", "0.1"), ("10\\%", "11"), ("0.1", "\\frac{1}{10}"), ("0.3333333", "\\frac{1}{3}"),
    ("\\frac{1}{3}", "0.333"), ("2^{100}", "2^{100}+1"), ("10^{-40}", "0"), ("1,000", "1000"), ("007", "7"),
    ("(1,2)", "(1,3)"), ("\\{1,2\\}", "\\{2,1\\}"),
    ("x=5", "5"), ("5", "x=5"), ("y=2x+3", "y = 3 + 2x"), ("6 - 5i", "6+5i"), ("6 - 5i", "6-5i"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}"), ("\\infty", "10^{100}"),
    ("(2,7)", "5"), ("5", "(2,7)"), ("[0,1)", "\\frac{1}{2}"), ("(0,9) \\cup (9,36)", "12"), ("(1,2)", "1,2"),
    ("(-\\infty, 0]", "x"), ("\\{3\\}", "[3,3]"), ("\\text{east}", "\\text{west}"), ("90^\\circ", "90"), ("\\frac{1}{0}", "1"), ("5!", "120"), ("\\binom{5}{2}", "11"),
]


def _plain_verdict(gold: str, answer: str) -> bool:
    """Plain math-verify's verdict, on whitespace made single spaces as math_answer does."""
    gold, answer = " ".join(gold.split()), " ".join(answer.split())
    with math_shortcuts.plain_math_verify():
        gold_parsed = parse(f"${gold}$", [LatexExtractionConfig()], parsing_timeout=None)
        parsed = parse(f"${answer}$", [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=None)
        return bool(gold_parsed and parsed and verify(gold_parsed, parsed, timeout_seconds=None))


def _refused(gold: str, answer: str, why: str) -> bool:
    """posttrain's own rules refuse the answer (math_screen.refusal, or no parse of the whole answer)."""
    gold, answer = " ".join(gold.split()), " ".join(answer.split())
    return bool(refusal(gold, answer)) or literal_percent(gold, answer) != answer or "as a whole" in why


def _disagreements(pairs: list[tuple[str, str]]) -> list[tuple[str, str, bool]]:
    """Pairs our verdict differs from plain math-verify's on, among those the rules do not refuse."""
    math_answer._decide.cache_clear()  # decided afresh, through every shortcut
    ours = [math_answer.equivalent(gold, answer) for gold, answer in pairs]
    return [(g, a, mine) for (g, a), (mine, why) in zip(pairs, ours)
            if not _refused(g, a, why) and mine != _plain_verdict(g, a)]


def _honest_refused(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Of the pairs whose answer is the gold's own text or a restatement of it, those the rules refuse."""
    return [(g, a) for g, a in pairs if _refused(g, a, math_answer.equivalent(g, a)[1])]


def _math500_pairs(step: int, honest_only: bool = False) -> list[tuple[str, str]]:
    answers = [r["answer"] for r in read_rows(shared_file("math500/test.jsonl"))]
    pairs = []
    for i in range(0, len(answers), step):
        gold = answers[i]
        pairs += [] if honest_only else [(gold, answers[(i + 1) % len(answers)])]
        pairs += [(gold, gold), (gold, restate(gold, i))]
    return pairs


def test_shortcut_verdicts_are_math_verifys_on_variants_and_a_math500_sample():
    assert _disagreements(VARIANTS + _math500_pairs(step=100)) == []
    assert _honest_refused(_math500_pairs(step=100, honest_only=True)) == []


def test_the_rules_refuse_what_plain_math_verify_accepts_and_nothing_honest():
    """The contract has teeth: these pairs are equal to plain math-verify and refused here."""
    hostile = [("4", "\\neq 4"), ("4", "5 ? 4"), ("4", "\\phantom{4}"), ("4", "4\\%"), ("4", "x = 5 = 4")]
    assert all(_plain_verdict(g, a) for g, a in hostile)
    assert _honest_refused(hostile) == hostile
    assert _honest_refused([("4", "x = 4"), ("x=5", "5"), ("10\\%", "10"), ("4", "4 \\text{ cm}")]) == []


@pytest.mark.slow
def test_shortcut_verdicts_are_math_verifys_on_all_of_math500():
    """Each gold answer against the next row's, its own and a restatement of it (test_rewards_load.restate)."""
    assert _disagreements(_math500_pairs(step=1)) == []
    assert _honest_refused(_math500_pairs(step=1, honest_only=True)) == []


@pytest.mark.parametrize("gold, answer, unequal", [
    ("3*sqrt(3)/4", "2", True), ("pi**2/8", "9/2", True), ("x**8 + x + 1", "4", True), ("p - q", "14/3", True),
    ("(x**2 - 1)/(x - 1)", "x + 2", True), ("sqrt(2) + sqrt(3)", "sqrt(5 + 2*sqrt(6))", False),  # equal
    ("(x**2 - 1)/(x - 1)", "x + 1", False), ("sin(x)", "0", False),  # not a rational function of x
    ("0.5", "1/3", False), ("pi", "3", True), ("2**(-200)", "0", True), ("oo", "1", False)])
def test_provably_unequal_only_when_the_difference_cannot_be_zero(gold, answer, unequal):
    assert math_shortcuts.provably_unequal(sympy.sympify(gold), sympy.sympify(answer)) is unequal


@pytest.mark.parametrize("latex", ["0", "007", "12,345", "3.14", "1,000.5", "\\frac{14}{3}", "10^{3}", "2\\sqrt{3}"])
def test_numbers_parse_to_what_plain_math_verify_gives(latex):
    math_shortcuts.install()
    ours = parse(f"${latex}$", [LatexExtractionConfig()], parsing_timeout=None)
    with math_shortcuts.plain_math_verify():
        theirs = parse(f"${latex}$", [LatexExtractionConfig()], parsing_timeout=None)
    assert [sympy.srepr(x) if isinstance(x, sympy.Basic) else x for x in ours] == \
        [sympy.srepr(x) if isinstance(x, sympy.Basic) else x for x in theirs]


def test_the_parser_warm_up_parses_from_a_pool_thread(monkeypatch):
    """The first worker may be forked from a pool's thread, where math-verify's signal-based timeout fails."""
    import threading

    parsed, plain_parse = [], math_answer._parse

    def spy(*args):
        parsed.append(plain_parse(*args))  # raises (and the warm-up swallows it) where a timeout is set
        return parsed[-1]

    monkeypatch.setattr(math_answer, "_parse", spy)
    monkeypatch.setattr(math_answer, "WARM_UP", ["\\frac{1}{2}+x", "\\left( -3, \\frac{2}{13} \\right]"])
    thread = threading.Thread(target=math_answer.warm_up_parser.__wrapped__)
    thread.start()
    thread.join()
    assert [str(p[0]) for p in parsed] == ["x + 1/2", "Interval.Lopen(-3, 2/13)"]
