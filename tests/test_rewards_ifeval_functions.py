"""The IFEval rows of Tülu 3's RLVR mixture (allenai/RLVR-GSM-MATH-IF-Mixed-Constraints): `ground_truth` is
open-instruct's JSON {"func_name": ..., args}. Every func_name of open-instruct's IF_FUNCTIONS_MAP
(open_instruct/if_functions.py, read at allenai/open-instruct e6c3044a; scored by IFEvalVerifierOld in
open_instruct/ground_truth_utils.py) gets a completion that its function passes and one it fails, as read from
that file. Where open-instruct's semantics differ from IFEval's checker of the same instruction (exact counts,
case, separators), the failing case is one that IFEval's checker would pass, so a func_name mapped onto the
wrong checker fails here."""
import json
from pathlib import Path

import pytest
import yaml

from posttrain.rewards import RowError, get_verifier, score_rows
from posttrain.stages.rlvr.stage import RLVRConfig, RewardTerm, routed

REPO = Path(__file__).resolve().parents[1]
# IF_FUNCTIONS_MAP's keys, in its order.
OPEN_INSTRUCT = ["verify_keywords", "verify_keyword_frequency", "validate_forbidden_words", "verify_letter_frequency",
                 "validate_response_language", "verify_paragraph_count", "validate_word_constraint",
                 "verify_sentence_constraint", "validate_paragraphs", "verify_postscript", "validate_placeholders",
                 "verify_bullet_points", "validate_title", "validate_choice", "validate_highlighted_sections",
                 "validate_sections", "validate_json_format", "validate_repeat_prompt", "validate_two_responses",
                 "validate_uppercase", "validate_lowercase", "validate_frequency_capital_words", "validate_end",
                 "validate_quotation", "validate_no_commas"]
GERMAN = "Das ist ein kurzer deutscher Satz, und er ist ganz sicher auf Deutsch geschrieben worden."
CASES = [  # (func_name, arguments, a completion it passes, one it fails)
    ("verify_keywords", {"keyword_list": ["Apple", "pie"]}, "I like apple PIE.", "I like apple tart."),
    ("verify_keyword_frequency", {"word": "cat", "N": 2}, "The cat saw a cat in the category.", "cat cat cat"),
    ("validate_forbidden_words", {"forbidden_words": ["cat"]}, "A dog barked.", "A category of things."),
    ("verify_letter_frequency", {"letter": "a", "N": 2}, "A cab and", "a cab and"),
    ("validate_response_language", {"language": "de"}, GERMAN, "This is a short sentence, written in plain English."),
    ("verify_paragraph_count", {"N": 2}, "First part.\n * * * \nSecond part.", "First part.\n***\nSecond part."),
    ("validate_word_constraint", {"N": 10, "quantifier": "around"}, "one two three four five six seven eight nine",
     "one two three four five six seven eight nine ten eleven twelve"),
    ("verify_sentence_constraint", {"N": 2, "quantifier": "at most"}, "One. Two.", "One. Two. Three."),
    ("validate_paragraphs", {"N": 2, "first_word": "Second", "i": 2}, "First one.\n\nSecond one.",
     "First one.\n\nsecond one."),
    ("verify_postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. see you", "Hi.\np.s. see you"),
    ("validate_placeholders", {"N": 2}, "Dear [name] at [address]", "Dear [name\n] at [address]"),
    ("verify_bullet_points", {"N": 2}, "* one\n- two\nend", "* one\n- two\n**bold** line"),
    ("validate_title", {}, "<<>>\nan empty title counts", "<Joy>\na poem"),
    ("validate_choice", {"options": ["My answer is yes.", "My answer is no."]}, "My answer is no.", "Maybe."),
    ("validate_highlighted_sections", {"N": 2}, "** and *b*", "*a* and b"),
    ("validate_sections", {"N": 2, "section_splitter": "SECTION"}, "SECTION 1 a SECTION 2 b",
     "SECTION 1 a SECTION 2 b SECTION 3 c"),
    ("validate_json_format", {}, '{"a": 1}', '```json\n{"a": 1}\n```'),
    ("validate_repeat_prompt", {"original_prompt": "Say hi."}, "Say hi. Hi!", "say hi. Hi!"),
    ("validate_two_responses", {}, "Red.\n******\nBlue.", "Red.\n******\nBlue.\n******"),
    ("validate_uppercase", {}, "HELLO 123", "HELLO there"),
    ("validate_lowercase", {}, "hello 123", "hello There"),
    ("validate_frequency_capital_words", {"N": 2, "quantifier": "at least"}, "NASA and ESA", "NASA and Esa"),
    ("validate_end", {"end_phrase": "Any questions?"}, "Thanks. Any questions?", "Thanks. any questions?"),
    ("validate_quotation", {}, '"Hi"', 'Hi"'),
    ("validate_no_commas", {}, "<think>Well, yes</think>a b", "a, b"),
]


def row(func_name: str, **args) -> dict:
    """As in the dataset: every argument key present, null where the function takes none."""
    keys = {k for _, a, _, _ in CASES for k in a}
    return {"id": func_name, "ground_truth": json.dumps({"func_name": func_name, **dict.fromkeys(sorted(keys)), **args})}


def score(completion: str, r: dict) -> float:
    return get_verifier("ifeval").verify_unguarded(completion, r).score


def test_every_open_instruct_function_has_a_case():
    from posttrain.rewards.ifeval_functions import FUNCTIONS

    assert sorted(name for name, *_ in CASES) == sorted(OPEN_INSTRUCT) == sorted(FUNCTIONS)


@pytest.mark.parametrize("func_name, args, good, bad", CASES, ids=[c[0] for c in CASES])
def test_open_instruct_semantics_pass_and_fail(func_name, args, good, bad):
    r = row(func_name, **args)
    assert score(good, r) == 1.0
    assert score(bad, r) == 0.0


def test_the_thinking_section_and_answer_tags_are_not_scored():
    r = row("validate_lowercase")
    assert score("<think>Let Me Think</think><answer>all lower</answer>", r) == 1.0
    assert score("<think>fine</think>Not Lower", r) == 0.0
    assert score("<think>only thinking</think>", r) == 0.0  # nothing left to follow the instruction


def test_a_dict_ground_truth_is_read_as_the_json_string():
    assert get_verifier("ifeval").verify_unguarded("abc", {"ground_truth": {"func_name": "validate_lowercase"}}).score == 1.0


@pytest.mark.parametrize("truth, message", [
    ({"func_name": "validate_lowercas"}, "unknown open-instruct IFEval func_name 'validate_lowercas' (did you mean 'validate_lowercase'?)"),
    ({"func_name": "verify_keyword_frequency", "word": "cat"}, "verify_keyword_frequency takes ['word', 'N']; missing ['N']"),
    ({"func_name": "validate_lowercase", "N": 3}, "validate_lowercase takes no arguments; unexpected ['N']"),
    ({"func_name": "validate_word_constraint", "N": 3, "quantifier": "exactly"}, "quantifier must be 'at least'"),
    ({"func_name": "validate_paragraphs", "N": 2, "first_word": "A", "i": 3}, "paragraph i=3 is not between 1 and N=2"),
    ({"N": 3}, "unknown open-instruct IFEval func_name None"),
    ("not json", "needs instruction_id_list/kwargs (IFEval) or a ground_truth with open-instruct's JSON"),
])
def test_bad_rows_are_row_errors_that_say_what_is_wrong(truth, message):
    r = {"id": "r7", "ground_truth": truth if isinstance(truth, str) else json.dumps(truth)}
    with pytest.raises(RowError, match="row id='r7'") as info:
        score("some text", r)
    assert message in str(info.value)
    [verdict] = score_rows(["some text"], [r], "ifeval", max_failure_fraction=1.0)
    assert verdict.failure == "bad_row" and verdict.score == 0.0


def test_the_mixture_fixture_routes_every_row_to_a_verifier_that_reads_it():
    """Tülu 3's recipe routes by `dataset` through its route_map; the fixture's IFEval rows are scored by
    open-instruct's functions, its GSM8K and MATH rows as before; no row is a bad row."""
    stage = yaml.safe_load((REPO / "recipes" / "tulu3_8b.yaml").read_text())["stages"]["rlvr"]
    cfg = RLVRConfig(model="m", data="d", prompt_column="messages", route_column="dataset",
                     route_map=stage["route_map"], rewards=[RewardTerm("verifier")])
    lines = (REPO / "tests" / "fixtures" / "tulu3_rlvr_mixture.jsonl").read_text().splitlines()
    rows = [routed(json.loads(line), cfg, f"fixture:{i + 1}") for i, line in enumerate(lines)]
    ifeval = [r for r in rows if r["dataset"] == "ifeval"]
    assert len(ifeval) >= 3 and {r["verifier"] for r in ifeval} == {"ifeval"}
    right = {"validate_lowercase": "golden leaves drift down", "verify_keywords": "The harvest moon rises.",
             "validate_word_constraint": "Air scatters blue light more than red light."}
    names = [json.loads(r["ground_truth"])["func_name"] for r in ifeval]
    good = [right[n] for n in names]
    bad = ["Golden Leaves", "The moon rises.", " ".join(["word"] * 21)]
    assert [v.score for v in score_rows(good, ifeval)] == [1.0, 1.0, 1.0]
    assert [v.score for v in score_rows(bad, ifeval)] == [0.0, 0.0, 0.0]
    others = [r for r in rows if r["dataset"] != "ifeval"]
    answers = [f"The answer is {r['ground_truth']}." if r["verifier"] == "numeric" else f"\\boxed{{{r['ground_truth']}}}"
               for r in others]
    assert [v.score for v in score_rows(answers, others)] == [1.0] * len(others)
