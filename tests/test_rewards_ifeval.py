"""IFEval verifier: hand-written cases, including the two checkers whose reference needs NLTK data."""
import pytest

from posttrain.data import read_rows, shared_file
from posttrain.rewards import RowError, get_verifier, ifeval_details, score_rows
from posttrain.rewards.ifeval_checks import CHECKERS, capital_words, count_sentences


def _row(*instructions):
    return {"id": "t", "instruction_id_list": [i for i, _ in instructions], "kwargs": [kw for _, kw in instructions]}


def test_all_25_instruction_types_of_the_data_are_covered():
    ids = {i for row in read_rows(shared_file("ifeval/input_data.jsonl")) for i in row["instruction_id_list"]}
    assert len(ids) == 25 and ids == set(CHECKERS)


@pytest.mark.parametrize("text, expected", [
    ("One sentence only", 1),
    ("First sentence. Second one! Third?", 3),
    ("Dr. Smith met Mr. Jones at 5 p.m. today. They talked.", 2),
    ("He said \"Stop.\" Then he left.", 2),
    ("Prices rose 3.5 percent. Wages did not.", 2),
    ("Wait... what? Really!", 2),  # punkt: an ellipsis before a lower-case word ends no sentence
    ("Wait... What? Really!", 3),
    ("J. R. R. Tolkien wrote books. Many of them.", 2),
    ("", 0),
])
def test_sentence_count_without_nltk(text, expected):
    assert count_sentences(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("THIS is A test", 2), ("DON'T stop", 2), ("WELL-KNOWN fact", 1), ("U.S. policy", 1), ("don't", 0), ("I AM 42", 2),
])
def test_capital_word_count_without_nltk(text, expected):
    assert capital_words(text) == expected


def test_nltk_dependent_checkers_through_the_verifier():
    v = get_verifier("ifeval")
    few = _row(("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3}))
    assert v("One. Two.", few).score == 1.0
    assert v("One. Two. Three.", few).score == 0.0
    caps = _row(("change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 2}))
    assert v("VERY IMPORTANT note", caps).score == 1.0
    assert v("Very important note", caps).score == 0.0


def test_prompt_level_score_and_instruction_level_details():
    row = _row(("punctuation:no_comma", {}), ("length_constraints:number_words", {"relation": "at least", "num_words": 5}),
               ("startend:end_checker", {"end_phrase": "Any questions?"}))
    text = "This reply has enough words. Any questions?"
    assert get_verifier("ifeval")(text, row).score == 1.0
    bad = "Short, reply."
    verdict = get_verifier("ifeval")(bad, row)
    assert verdict.score == 0.0 and "0/3" in verdict.reason and "punctuation:no_comma" in verdict.reason
    assert ifeval_details(bad, row) == [False, False, False]
    assert ifeval_details("Short reply with words. Any questions?", row) == [True, True, True]
    assert ifeval_details("x" * 100_000, row) == [False, False, False]  # over max_chars


def test_loose_mode_forgives_a_preamble_and_markdown_stars():
    row = _row(("startend:quotation", {}))
    text = 'Sure, here it is:\n"Quoted answer"'
    assert get_verifier("ifeval")(text, row).score == 0.0
    assert get_verifier("ifeval_loose")(text, row).score == 1.0
    assert get_verifier("ifeval", loose=True)(text, row).score == 1.0
    assert ifeval_details(text, row, loose=True) == [True]
    title = _row(("detectable_format:title", {}))
    assert get_verifier("ifeval")("**<<My Title>>**", title).score == 1.0


@pytest.mark.parametrize("instruction, kwargs, good, bad", [
    ("keywords:existence", {"keywords": ["river", "stone"]}, "A Stone by the river.", "Only a river."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "cat and cat", "one cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "badminton is fine", "that is BAD"),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"}, "one z only", "buzz"),
    ("language:response_language", {"language": "de"}, "Das ist ein deutscher Satz über das Wetter.", "This is English text about weather."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "One\n***\nTwo", "One\n***\n***\nTwo"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First.\n\nThen, second.", "First.\n\nSecond."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[a] and [b]", "[a] and b]"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. bye", "Hi. PS bye"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n* b", "* a\n* b\n- c"),
    ("detectable_format:constrained_response", {}, "My answer is no.", "No."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* and ** **"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}, "Section 1\na\nSection 2\nb", "Section 1 only"),
    ("detectable_format:json_format", {}, "```json\n{\"a\": 1}\n```", "{a: 1}"),
    ("combination:two_responses", {}, "A\n******\nB", "A\n******\nA"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", "Hi!"),
    ("change_case:english_capital", {}, "THIS IS ALL CAPITALS IN ENGLISH", "This Is Not"),
    ("change_case:english_lowercase", {}, "this is all lowercase english text", "this is Not"),
    ("punctuation:no_comma", {}, "no comma", "a, b"),
    ("startend:quotation", {}, '"all quoted"', 'not "quoted"'),
])
def test_each_checker_has_a_positive_and_a_negative(instruction, kwargs, good, bad):
    v = get_verifier("ifeval")
    row = _row((instruction, kwargs))
    assert v(good, row).score == 1.0
    assert v(bad, row).score == 0.0


def test_empty_response_follows_nothing_and_bad_rows_raise():
    assert get_verifier("ifeval")("   ", _row(("punctuation:no_comma", {}))).score == 0.0
    with pytest.raises(RowError, match="unknown IFEval instruction ids"):
        get_verifier("ifeval")("x", _row(("made:up", {})))
    with pytest.raises(RowError, match="lack 'num_words'"):
        get_verifier("ifeval")("x", _row(("length_constraints:number_words", {"relation": "at least"})))
    with pytest.raises(RowError, match="2 instruction ids but 1 kwargs"):
        get_verifier("ifeval")("x", {"instruction_id_list": ["punctuation:no_comma"] * 2, "kwargs": [{}]})


@pytest.mark.parametrize("text, expected", [
    ("SOLAR/WIND/WATER power", 1), ("HELLO,WORLD", 2), ("A:B", 2), ("10:30 AM", 1), ("NASA'S plan", 2), ("CANNOT", 2),
    ("(NASA) and [ESA]", 2), ("AT&T", 2), ("WAIT...NO", 2), ("U.S.A. and C++", 2), ("WELL-KNOWN E=MC2", 2),
])
def test_capital_words_are_counted_on_nltk_word_tokenize_tokens(text, expected):
    assert capital_words(text) == expected


@pytest.mark.slow  # importing nltk costs ~5 s of CPU
def test_capital_word_tokens_agree_with_nltks_tokenizer_on_random_sentences():
    """nltk's NLTKWordTokenizer (what word_tokenize runs on each sentence) needs no data; skipped without nltk."""
    nltk_tokenizer = pytest.importorskip("nltk.tokenize").NLTKWordTokenizer()
    import random

    pieces = ["SOLAR/WIND/WATER", "DON'T", "NASA's", "NASA'S", "e-mail", "HELLO,WORLD", "A:B", "10:30", "(NASA)", "CANNOT",
              "U.S.A.", "I'M", "*BOLD*", "--", "...", "WAIT...NO", "A;B", "AT&T", "$5", "1,000", "A,1", "\u201cQUOTE\u201d",
              "HE'LL", "GONNA", "OK!", "WHY?NOT", "<TAG>", "A--B", "FOO_BAR", "C++", "hello", "World", "I", "a", "DOGS'",
              "'HELLO'", '"HI"', "A.B", "\u00c9COLE", "A\u2013B", "x"]
    rng = random.Random(0)
    texts = [" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) for _ in range(2000)]
    assert [t for t in texts if capital_words(t) != sum(w.isupper() for w in nltk_tokenizer.tokenize(t))] == []


@pytest.mark.parametrize("text, expected", [
    ("Wait... and then it rained.", 1), ("Well... maybe. Yes.", 2), ("He paused... Then he left.", 2), ("So... 42 it is.", 1),
])
def test_an_ellipsis_before_a_lower_case_word_ends_no_sentence(text, expected):
    assert count_sentences(text) == expected


@pytest.mark.parametrize("instruction, kwargs, message", [
    ("keywords:letter_frequency", {"letter": "ab", "let_frequency": 2, "let_relation": "at least"}, "one character"),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": -1, "let_relation": "at least"}, "let_frequency must be a count"),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": -2}, "num_sentences must be a count"),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 2.5}, "num_words must be a count"),
    ("detectable_format:number_bullet_lists", {"num_bullets": "3"}, "num_bullets must be a count"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "a"},
     "nth_paragraph=3 is not between 1 and num_paragraphs=2"),
])
def test_arguments_the_reference_does_not_honour_are_row_errors(instruction, kwargs, message):
    row = _row((instruction, kwargs))
    with pytest.raises(RowError, match=message):
        get_verifier("ifeval").verify_unguarded("aaaa bbbb. cccc.", row)
    [verdict] = score_rows(["aaaa"], [row], "ifeval", max_failure_fraction=1.0)
    assert verdict.failure == "bad_row" and verdict.score == 0.0


def test_a_row_without_instructions_scores_zero():
    """open-instruct's regression test (its PR #1655): an empty instruction list is not followed by anything."""
    empty = {"id": "e", "instruction_id_list": [], "kwargs": []}
    verdict = get_verifier("ifeval").verify_unguarded("any text at all", empty)
    assert verdict.score == 0.0 and "no instructions" in verdict.reason
    assert get_verifier("ifeval_loose").verify_unguarded("any text at all", empty).score == 0.0
