"""The 25 IFEval instruction checkers, keyed by instruction id, each `check(response, kwargs) -> bool`.

They follow the reference implementation (google-research `instruction_following_eval`, as vendored by
lm-eval) instruction by instruction; the test suite compares them with lm-eval's checkers. Where the
reference runs a regex that backtracks quadratically on hostile text (bullet lists, placeholders,
titles, postscripts), the check here is an equivalent linear scan. Two checkers need NLTK data in the
reference (punkt for `length_constraints:number_sentences`, `word_tokenize` for
`change_case:capital_word_frequency`); here they use the small tokenizers below instead.

Arguments the reference does not honour (it replaces a negative count, or a `letter` of several characters,
by a random one, and raises on an `nth_paragraph` outside 1..num_paragraphs) are a RowError here: a row to fix.
"""
from __future__ import annotations

import collections
import json
import re
from typing import Any, Callable

from posttrain.rewards.core import RowError

_RELATIONS = ("less than", "at least")
_CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
_NONSPACE = re.compile(r"\S")

CHECKERS: dict[str, Callable[[str, dict], bool]] = {}


def checker(instruction_id: str):
    def register(fn):
        CHECKERS[instruction_id] = fn
        return fn
    return register


COUNTS = {"num_sentences", "num_paragraphs", "num_words", "nth_paragraph", "num_placeholders", "num_bullets",
          "num_highlights", "num_sections", "let_frequency", "frequency", "capital_frequency"}


def arg(kwargs: dict, name: str) -> Any:
    value = kwargs.get(name)
    if not value:  # the reference drops falsy kwargs too
        raise RowError(f"IFEval kwargs lack {name!r} (got {kwargs})")
    if name in COUNTS and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise RowError(f"IFEval {name} must be a count (an integer >= 0), got {value!r}")
    return value


def compare(count: int, kwargs: dict, relation_key: str, threshold_key: str) -> bool:
    relation = arg(kwargs, relation_key)
    if relation not in _RELATIONS:
        raise RowError(f"IFEval {relation_key} must be one of {_RELATIONS}, got {relation!r}")
    threshold = arg(kwargs, threshold_key)
    return count < threshold if relation == "less than" else count >= threshold


def detect_language(text: str) -> str | None:
    """langdetect's language code, seeded so a text always gets the same answer; None if undetectable."""
    import langdetect

    langdetect.DetectorFactory.seed = 0
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None


_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "inc", "ltd",
                  "co", "no", "fig", "approx", "dept", "est", "vol", "u.s", "a.m", "p.m"}
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]\u201d\u2019]*(?=\s|$)")
_LOWER_NEXT = re.compile(r"\s+[\"'(\u201c\u2018]*[a-z0-9]")


def count_sentences(text: str) -> int:
    """Sentences ended by . ! or ? before whitespace or the end, not after a known abbreviation or a
    single-letter initial, nor an ellipsis followed by a lower-case word (punkt's orthographic heuristic:
    "Wait... and then" is one sentence); trailing text without a full stop counts as one more (as punkt does)."""
    count, start = 0, 0
    for end in _SENTENCE_END.finditer(text):
        words = text[max(start, end.start() - 40):end.start()].split()  # a window keeps this linear
        if not words:
            continue
        last_word = words[-1].lower().strip("\"'(")
        if end.group().startswith(".") and (last_word in _ABBREVIATIONS or len(last_word) == 1 and last_word.isalpha()):
            continue
        if end.group().startswith("..") and _LOWER_NEXT.match(text, end.end()):
            continue
        count += 1
        start = end.end()
    return count + bool(text[start:].strip())


# Where nltk's word_tokenize (NLTKWordTokenizer, the Treebank rules) splits inside a run of non-space text: these
# punctuation marks, "--", "..", dashes, a colon or comma not before a digit. It does not split at "/", "-", "+",
# "_" or a single inner "." ("SOLAR/WIND/WATER", "WELL-KNOWN", "U.S.A." are one token each).
_TOKEN_SPLIT = re.compile(r"[;@#$%&?!*\[\](){}<>\"`\u00ab\u00bb\u201c\u201d\u2018\u2019\u201e\u2012-\u2015]|--|\.{2,}|[:,](?!\d)")
_CONTRACTION = re.compile(r"(?<=[^' ])('[sSmMdD]|'ll|'LL|'re|'RE|'ve|'VE|n't|N'T|')$")
_JOINED = [re.compile(p) for p in (r"(?i)\b(can)(not)$", r"(?i)\b(d)('ye)$", r"(?i)\b(gim)(me)$", r"(?i)\b(gon)(na)$",
                                   r"(?i)\b(got)(ta)$", r"(?i)\b(lem)(me)$", r"(?i)\b(more)('n)$", r"(?i)\b(wan)(na)$")]


def word_tokens(text: str) -> list[str]:
    """nltk's word_tokenize as far as the case of its tokens goes: runs of non-space text split where the
    Treebank rules split them, then a contraction ("DON'T" is "DO" + "N'T", "CANNOT" is "CAN" + "NOT")."""
    tokens = []
    for piece in _TOKEN_SPLIT.sub(" ", text).split():
        for joined in _JOINED:
            if joined.search(piece):
                piece = joined.sub(r"\1 \2", piece)
                break
        for part in piece.split():
            contraction = _CONTRACTION.search(part)
            tokens += [part[:contraction.start()], contraction.group(1)] if contraction else [part]
    return tokens


def capital_words(text: str) -> int:
    """The reference's count: tokens of nltk's word_tokenize that are upper case (str.isupper)."""
    return sum(token.isupper() for token in word_tokens(text))


def count_lines_starting_with(text: str, marker: str) -> int:
    """Matches of the reference's `^\\s*<marker>.*$` (MULTILINE) in one linear pass. For "*" the marker
    must be followed by any character but "*" (which may be a newline, and then the match runs to the
    end of the next line)."""
    count, line_start, n = 0, 0, len(text)
    while line_start <= n:
        first = _NONSPACE.search(text, line_start)
        if first is None:
            break
        at = first.start()
        if text[at] == marker and (marker != "*" or (at + 1 < n and text[at + 1] != "*")):
            count += 1
            at += 2 if marker == "*" else 1
        newline = text.find("\n", at)
        if newline < 0:
            break
        line_start = newline + 1
    return count


def count_placeholders(text: str) -> int:
    """Matches of `\\[.*?\\]`: a [ closed by a ] on the same line."""
    count = 0
    for line in text.split("\n"):
        at = line.find("[")
        while at >= 0:
            close = line.find("]", at + 1)
            if close < 0:
                break
            count += 1
            at = line.find("[", close + 1)
    return count


def has_title(text: str) -> bool:
    """A `<<title>>` with non-blank content; per line, the reference's greedy match runs from the
    first << to the last >>."""
    for line in text.split("\n"):
        start, end = line.find("<<"), line.rfind(">>")
        if start >= 0 and end >= start + 3 and line[start:end + 2].lstrip("<").rstrip(">").strip():
            return True
    return False


@checker("keywords:existence")
def _keywords_exist(value: str, kwargs: dict) -> bool:
    return all(re.search(re.escape(k), value, re.IGNORECASE) for k in arg(kwargs, "keywords"))


@checker("keywords:frequency")
def _keyword_frequency(value: str, kwargs: dict) -> bool:
    keyword = arg(kwargs, "keyword").strip()
    return compare(len(re.findall(re.escape(keyword), value, re.IGNORECASE)), kwargs, "relation", "frequency")


@checker("keywords:forbidden_words")
def _forbidden_words(value: str, kwargs: dict) -> bool:
    return not any(re.search(rf"\b{re.escape(w)}\b", value, re.IGNORECASE) for w in arg(kwargs, "forbidden_words"))


@checker("keywords:letter_frequency")
def _letter_frequency(value: str, kwargs: dict) -> bool:
    letter = arg(kwargs, "letter").strip().lower()
    if len(letter) != 1:
        raise RowError(f"IFEval letter must be one character, got {kwargs['letter']!r}")
    return compare(collections.Counter(value.lower())[letter], kwargs, "let_relation", "let_frequency")


@checker("language:response_language")
def _response_language(value: str, kwargs: dict) -> bool:
    language = detect_language(value)
    return language is None or language == arg(kwargs, "language")  # undetectable counts as followed


@checker("length_constraints:number_sentences")
def _number_sentences(value: str, kwargs: dict) -> bool:
    return compare(count_sentences(value), kwargs, "relation", "num_sentences")


@checker("length_constraints:number_paragraphs")
def _number_paragraphs(value: str, kwargs: dict) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", value)
    count = len(paragraphs)
    for index, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if index in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == arg(kwargs, "num_paragraphs")


@checker("length_constraints:number_words")
def _number_words(value: str, kwargs: dict) -> bool:
    return compare(len(re.findall(r"\w+", value)), kwargs, "relation", "num_words")


@checker("length_constraints:nth_paragraph_first_word")
def _nth_paragraph_first_word(value: str, kwargs: dict) -> bool:
    paragraphs = value.split("\n\n")
    count = sum(1 for p in paragraphs if p.strip())
    nth = arg(kwargs, "nth_paragraph")
    if nth > arg(kwargs, "num_paragraphs"):
        raise RowError(f"IFEval nth_paragraph={nth} is not between 1 and num_paragraphs={kwargs['num_paragraphs']}")
    if nth > count or not paragraphs[nth - 1].strip():
        return False
    word = paragraphs[nth - 1].split()[0].strip().lstrip("'").lstrip('"')
    first_word = re.split(r"""[.,?!'"]""", word, maxsplit=1)[0].lower()
    return count == arg(kwargs, "num_paragraphs") and first_word == arg(kwargs, "first_word").lower()


@checker("detectable_content:number_placeholders")
def _number_placeholders(value: str, kwargs: dict) -> bool:
    return count_placeholders(value) >= arg(kwargs, "num_placeholders")


@checker("detectable_content:postscript")
def _postscript(value: str, kwargs: dict) -> bool:
    marker = arg(kwargs, "postscript_marker").strip()
    pattern = {"P.P.S": r"p\.\s?p\.\s?s", "P.S.": r"p\.\s?s\."}.get(marker, re.escape(marker.lower()))
    return re.search(pattern, value.lower()) is not None


@checker("detectable_format:number_bullet_lists")
def _number_bullet_lists(value: str, kwargs: dict) -> bool:
    bullets = count_lines_starting_with(value, "*") + count_lines_starting_with(value, "-")
    return bullets == arg(kwargs, "num_bullets")


@checker("detectable_format:constrained_response")
def _constrained_response(value: str, kwargs: dict) -> bool:
    return any(option in value.strip() for option in _CONSTRAINED_RESPONSES)


@checker("detectable_format:number_highlighted_sections")
def _number_highlighted_sections(value: str, kwargs: dict) -> bool:
    single = [h for h in re.findall(r"\*[^\n*]*\*", value) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n*]*\*\*", value) if h.removeprefix("**").removesuffix("**").strip()]
    return len(single) + len(double) >= arg(kwargs, "num_highlights")


@checker("detectable_format:multiple_sections")
def _multiple_sections(value: str, kwargs: dict) -> bool:
    splitter = re.escape(arg(kwargs, "section_spliter").strip())
    sections = re.split(rf"\s?{splitter}\s?\d+\s?", value)
    return len(sections) - 1 >= arg(kwargs, "num_sections")


@checker("detectable_format:json_format")
def _json_format(value: str, kwargs: dict) -> bool:
    value = value.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(fence)
    try:
        json.loads(value.removesuffix("```").strip())
    except (ValueError, RecursionError):
        return False
    return True


@checker("detectable_format:title")
def _title(value: str, kwargs: dict) -> bool:
    return has_title(value)


@checker("combination:two_responses")
def _two_responses(value: str, kwargs: dict) -> bool:
    parts = value.split("******")
    responses = []
    for index, part in enumerate(parts):
        if part.strip():
            responses.append(part)
        elif index not in (0, len(parts) - 1):
            return False
    return len(responses) == 2 and responses[0].strip() != responses[1].strip()


@checker("combination:repeat_prompt")
def _repeat_prompt(value: str, kwargs: dict) -> bool:
    return value.strip().lower().startswith(arg(kwargs, "prompt_to_repeat").strip().lower())


@checker("startend:end_checker")
def _end_checker(value: str, kwargs: dict) -> bool:
    return value.strip().strip('"').lower().endswith(arg(kwargs, "end_phrase").strip().lower())


@checker("startend:quotation")
def _quotation(value: str, kwargs: dict) -> bool:
    value = value.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


@checker("change_case:capital_word_frequency")
def _capital_word_frequency(value: str, kwargs: dict) -> bool:
    return compare(capital_words(value), kwargs, "capital_relation", "capital_frequency")


@checker("change_case:english_capital")
def _english_capital(value: str, kwargs: dict) -> bool:
    return value.isupper() and detect_language(value) in ("en", None)


@checker("change_case:english_lowercase")
def _english_lowercase(value: str, kwargs: dict) -> bool:
    return value.islower() and detect_language(value) in ("en", None)


@checker("punctuation:no_comma")
def _no_comma(value: str, kwargs: dict) -> bool:
    return "," not in value
