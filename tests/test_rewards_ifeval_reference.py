"""IFEval checkers against an independent reference: lm-eval's vendored copy of Google's checkers.

Needs the dev extra (`pip install lm-eval immutabledict`); skipped when lm-eval is not importable. The two
checkers that need NLTK data in lm-eval (number_sentences: punkt; capital_word_frequency:
word_tokenize) cannot run here and are covered by hand-written cases in test_rewards_ifeval.py.
"""
import random

import pytest

from posttrain.data import read_rows, shared_file
from posttrain.rewards.ifeval import loose_variants
from posttrain.rewards.ifeval_checks import CHECKERS, detect_language

reference = pytest.importorskip("lm_eval.tasks.ifeval.instructions_registry")

USE_LANGDETECT = {"language:response_language", "change_case:english_capital", "change_case:english_lowercase"}
NEEDS_NLTK_DATA = {"length_constraints:number_sentences", "change_case:capital_word_frequency"}

GENERIC = [
    "", "   ", "*", "**", "***", "hello", "Hello, world.", "HELLO WORLD THIS IS LOUD", "hello world this is quiet",
    "* one\n* two\n* three", "- a\n- b", "*not a bullet*\n**bold** text", "  * indented\n\n\n* after blanks",
    "*\nline after a lone star", "Para one.\n\n***\n\nPara two.", "***\nstart", "end\n***", "a *** *** b",
    "<<Title>>\nBody", "<<>> and << >>", "<<a>> x <<b", "[name] and [date]\n[unclosed\n]", "[[[]]]",
    '"quoted whole"', '"', "P.S. note", "Body\n\nP.P.S. more", "p. s. lower", "SECTION 1\nx\nSECTION 2\ny",
    "Section 1 intro Section 2", '{"a": 1}', "```json\n{\"a\": [1, 2]}\n```", "```\nnot json\n```",
    "first\n******\nsecond", "same\n******\nsame", "******\nonly one\n******", "My answer is yes.", "My answer is maybe",
    "Das ist ein deutscher Satz über das Wetter und die Stadt.", "Questo è un testo italiano sulla città e il mare.",
    "Это русский текст о погоде и городе.", "यह हिंदी में लिखा गया एक वाक्य है।", "Este é um texto em português sobre a cidade.",
    "\n\nfirst paragraph\n\nsecond paragraph\n\n", "Ünïcödé, ✓ emoji 🎉, and tabs\tand\r\nCRLF",
]


def _constructed(instruction_id: str, kw: dict, prompt: str) -> list[str]:
    """Responses built to satisfy the instruction and to just miss it."""
    n = lambda key, default=3: kw.get(key) or default  # noqa: E731
    kind = instruction_id.split(":")[1]
    if kind == "existence":
        return [f"We discuss {' and '.join(kw['keywords'])} here.", "Nothing relevant here."]
    if kind == "frequency":
        return [" ".join([kw["keyword"]] * k) for k in (kw["frequency"] - 1, kw["frequency"], kw["frequency"] + 1)]
    if kind == "forbidden_words":
        return ["A harmless sentence.", f"This mentions {kw['forbidden_words'][0]}.", f"x{kw['forbidden_words'][0]}y"]
    if kind == "letter_frequency":
        return [" ".join([kw["letter"] * 1] * k) for k in (kw["let_frequency"] - 1, kw["let_frequency"])]
    if kind == "number_paragraphs":
        return ["\n***\n".join(["para"] * k) for k in (n("num_paragraphs") - 1, n("num_paragraphs"), n("num_paragraphs") + 1)]
    if kind == "number_words":
        return [" ".join(["word"] * k) for k in (kw["num_words"] - 1, kw["num_words"])]
    if kind == "nth_paragraph_first_word":
        paragraphs = ["Intro text."] * kw["num_paragraphs"]
        good = list(paragraphs)
        good[kw["nth_paragraph"] - 1] = f"{kw['first_word'].capitalize()}, then more."
        return ["\n\n".join(good), "\n\n".join(paragraphs), "\n\n".join(good[:-1])]
    if kind == "number_placeholders":
        return [" ".join(["[slot]"] * k) for k in (kw["num_placeholders"] - 1, kw["num_placeholders"])]
    if kind == "postscript":
        return [f"Body.\n\n{kw['postscript_marker']} extra", "Body without a postscript."]
    if kind == "number_bullet_lists":
        return ["\n".join(["* item"] * k) for k in (kw["num_bullets"], kw["num_bullets"] + 1)] + ["- a\n* b"]
    if kind == "number_highlighted_sections":
        return [" ".join(["*part*"] * k) for k in (kw["num_highlights"] - 1, kw["num_highlights"])]
    if kind == "multiple_sections":
        return ["\n".join(f"{kw['section_spliter']} {i}\ntext" for i in range(1, k + 1))
                for k in (kw["num_sections"] - 1, kw["num_sections"])]
    if kind == "repeat_prompt":
        return [f"{kw['prompt_to_repeat']}\nMy answer.", "My answer."]
    if kind == "end_checker":
        return [f"Some text. {kw['end_phrase']}", f'"Quoted. {kw["end_phrase"]}"', "Some text."]
    if kind == "response_language":
        return GENERIC[-8:-3]
    return []


def _reference_check(instruction_id: str, kw: dict, prompt: str, response: str) -> bool:
    checker = reference.INSTRUCTION_DICT[instruction_id](instruction_id)
    checker.build_description(**{k: v for k, v in kw.items() if v})
    return bool(response.strip() and checker.check_following(response))


def _ours(instruction_id: str, kw: dict, response: str) -> bool:
    return bool(response.strip() and CHECKERS[instruction_id](response, kw))


def _random_texts(count: int) -> list[str]:
    rng = random.Random(0)
    alphabet = ["*", "**", "-", " ", "\n", "\n\n", "[", "]", "<<", ">>", "a", "Word", "P.S.", "p.p.s", "***", ",", '"', "1"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(count)]


def _unique_instructions() -> list[tuple[str, dict, str]]:
    unique = {}
    for row in read_rows(shared_file("ifeval/input_data.jsonl")):
        for instruction_id, kw in zip(row["instruction_id_list"], row["kwargs"]):
            unique.setdefault((instruction_id, repr(sorted(kw.items()))), (instruction_id, kw, row["prompt"]))
    return list(unique.values())


FUZZED = {"number_bullet_lists", "number_placeholders", "title", "postscript", "number_highlighted_sections",
          "number_paragraphs", "quotation", "two_responses", "json_format", "no_comma"}


# 40 random texts per fuzzed checker in the fast suite (~120,000 cases in all), 200 in the slow one
@pytest.mark.parametrize("fuzz_texts,min_cases", [(40, 100_000), pytest.param(200, 100_000, marks=pytest.mark.slow)])
def test_checkers_agree_with_lm_eval_on_constructed_responses(fuzz_texts, min_cases):
    detect_language("seeds langdetect")  # fixes langdetect's seed, which lm-eval's calls then share
    fuzz = _random_texts(fuzz_texts)
    cases, disagreements, seen_types = 0, [], set()
    for instruction_id, kw, prompt in _unique_instructions():
        if instruction_id in NEEDS_NLTK_DATA:
            continue
        seen_types.add(instruction_id)
        responses = _constructed(instruction_id, kw, prompt) + GENERIC
        if instruction_id not in USE_LANGDETECT:  # langdetect is slow: its checkers get the plain responses
            responses = [variant for response in responses for variant in loose_variants(response)]
        if instruction_id.split(":")[1] in FUZZED:
            responses += fuzz
        for response in responses:
            cases += 1
            if _ours(instruction_id, kw, response) != _reference_check(instruction_id, kw, prompt, response):
                disagreements.append((instruction_id, kw, response[:80]))
    assert len(seen_types) == 23
    assert cases > min_cases, cases
    agreement = 1 - len(disagreements) / cases
    assert agreement >= 0.99, f"{agreement:.4f} agreement; first disagreements: {disagreements[:5]}"
    # The one known difference: for a `letter` that is not an ASCII letter ("#", "!" occur in the data)
    # the reference counts a randomly chosen letter instead; we count the given character.
    unexplained = [d for d in disagreements if not (d[0] == "keywords:letter_frequency" and not d[1]["letter"].isalpha())]
    assert not unexplained, f"{len(unexplained)} disagreements of {cases}: {unexplained[:5]}"
