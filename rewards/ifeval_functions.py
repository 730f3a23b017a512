"""open-instruct's IFEval functions: the `ifeval` rows of allenai/RLVR-GSM-MATH-IF-Mixed-Constraints (Tülu 3's
RLVR mixture) carry `ground_truth` as JSON, `{"func_name": "verify_keywords", "keyword_list": [...], "N": null, ...}`.

Read from allenai/open-instruct (commit e6c3044a): `open_instruct/if_functions.py` (IF_FUNCTIONS_MAP, 25 functions)
and `IFEvalVerifierOld` in `open_instruct/ground_truth_utils.py`, which parses the JSON, drops arguments that are
None, strips the thinking section (`remove_thinking_section`) and calls the function on what is left.

A reward must be the one Tülu 3 trained with, and most of these functions are not IFEval's checkers: exact
counts where IFEval has "less than"/"at least", case-sensitive matching, other separators ("* * *" for
paragraphs, no code fences around JSON). So each follows open-instruct's semantics; the three that agree with
an IFEval checker (keywords, placeholders, no commas) call it. Differences on purpose: an unknown func_name,
a missing or unexpected argument, an unknown quantifier or an out-of-range paragraph index is a RowError
(open-instruct raises or silently scores 0); regexes that backtrack on hostile text are linear scans here.
"""
from __future__ import annotations

import difflib
import inspect
import json
import re
from typing import Callable

from posttrain.rewards.core import RowError, row_label
from posttrain.rewards.ifeval_checks import CHECKERS, detect_language

FUNCTIONS: dict[str, Callable[..., bool]] = {}
_SENTENCE_SPLIT = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?|!)\s")  # open-instruct's, linear
_CAPITAL_WORD = re.compile(r"\b[A-Z]+\b")


def function(fn: Callable[..., bool]) -> Callable[..., bool]:
    FUNCTIONS[fn.__name__] = fn
    return fn


def remove_thinking_section(prediction: str) -> str:
    """open-instruct's: the text after the last </think>, without <answer> tags and the <|assistant|> marker."""
    prediction = prediction.replace("<|assistant|>", "").strip().split("</think>")[-1]
    return prediction.replace("<answer>", "").replace("</answer>", "").strip()


def is_function_row(row: dict) -> bool:
    return row.get("instruction_id_list") is None and row.get("ground_truth") is not None


def constraint(row: dict) -> tuple[str, Callable[[str], bool]]:
    """(func_name, check(text)) for a row whose ground_truth is open-instruct's JSON; RowError otherwise."""
    truth = row["ground_truth"]
    try:
        spec = json.loads(truth) if isinstance(truth, str) else dict(truth)
        if not isinstance(spec, dict):  # e.g. "4": JSON, but not open-instruct's object
            raise TypeError
    except (ValueError, TypeError):
        raise RowError(f"{row_label(row)}: an ifeval row needs instruction_id_list/kwargs (IFEval) or a ground_truth "
                       f"with open-instruct's JSON {{\"func_name\": ...}}; got {str(truth)[:120]!r}") from None
    name = spec.pop("func_name", None)
    if name not in FUNCTIONS:
        close = difflib.get_close_matches(str(name), list(FUNCTIONS), n=1)
        raise RowError(f"{row_label(row)}: unknown open-instruct IFEval func_name {name!r}"
                       + (f" (did you mean {close[0]!r}?)" if close else "") + f"; known: {', '.join(sorted(FUNCTIONS))}")
    fn, args = FUNCTIONS[name], {k: v for k, v in spec.items() if v is not None}
    params = list(inspect.signature(fn).parameters)[1:]
    missing, extra = [p for p in params if p not in args], sorted(set(args) - set(params))
    if missing or extra:
        raise RowError(f"{row_label(row)}: {name} takes {params or 'no arguments'}; "
                       + (f"missing {missing}" if missing else f"unexpected {extra}"))

    def check(text: str) -> bool:
        try:
            return fn(text, **args)
        except RowError as e:  # an argument's value is wrong: say which row and function
            raise RowError(f"{row_label(row)}: {name}: {e}") from None
    return name, check


def _quantified(count: int, N: int, quantifier: str, around: int) -> bool:
    if quantifier == "at least":
        return count >= N
    if quantifier == "at most":
        return count <= N
    if quantifier == "around":
        return abs(count - N) <= around
    raise RowError(f"quantifier must be 'at least', 'around' or 'at most', got {quantifier!r}")


@function
def verify_keywords(text: str, keyword_list: list) -> bool:
    return CHECKERS["keywords:existence"](text, {"keywords": keyword_list})  # case-insensitive substrings, as here


@function
def verify_keyword_frequency(text: str, word: str, N: int) -> bool:
    return sum(w == word.lower() for w in re.findall(r"\b\w+\b", text.lower())) == N  # whole words, exactly N


@function
def validate_forbidden_words(text: str, forbidden_words: list) -> bool:
    return not any(w.lower() in text.lower() for w in forbidden_words)  # substrings (IFEval: whole words)


@function
def verify_letter_frequency(text: str, letter: str, N: int) -> bool:
    if len(letter) != 1:
        raise RowError(f"letter must be one character, got {letter!r}")
    return text.count(letter) == N  # case-sensitive, exactly N


@function
def validate_response_language(text: str, language: str) -> bool:
    return detect_language(text) == language  # undetectable fails (open-instruct raises; IFEval passes it)


@function
def verify_paragraph_count(text: str, N: int) -> bool:
    clean = "\n".join(line.strip() for line in text.splitlines()).strip()
    paragraphs = clean.split("* * *")
    return all(p.strip() for p in paragraphs) and len(paragraphs) == N


@function
def validate_word_constraint(text: str, N: int, quantifier: str) -> bool:
    return _quantified(len(text.strip().split()), N, quantifier, around=max(round(N * 0.1), 1))


@function
def verify_sentence_constraint(text: str, N: int, quantifier: str) -> bool:
    return _quantified(len(_SENTENCE_SPLIT.split(text)), N, quantifier, around=1)


@function
def validate_paragraphs(text: str, N: int, first_word: str, i: int) -> bool:
    if not 1 <= i <= N:
        raise RowError(f"paragraph i={i} is not between 1 and N={N}")
    paragraphs = text.split("\n\n")
    return len(paragraphs) == N and paragraphs[i - 1].strip().startswith(first_word)


@function
def verify_postscript(text: str, postscript_marker: str) -> bool:
    at = text.find(postscript_marker)  # case-sensitive, and something must follow the marker
    return at >= 0 and len(text[at:].strip()) > len(postscript_marker)


@function
def validate_placeholders(text: str, N: int) -> bool:
    return CHECKERS["detectable_content:number_placeholders"](text, {"num_placeholders": N})  # [..] on one line, >= N


@function
def verify_bullet_points(text: str, N: int) -> bool:
    return sum(line.strip().startswith(("*", "-")) for line in text.split("\n")) == N


@function
def validate_title(text: str) -> bool:
    """`<<(.*?)>>` anywhere (an empty title counts): a << with a >> after it on the same line."""
    return any((at := line.find("<<")) >= 0 and line.find(">>", at + 2) >= 0 for line in text.split("\n"))


@function
def validate_choice(text: str, options) -> bool:
    return any(option in text for option in options)  # as open-instruct: a str `options` is iterated by character


@function
def validate_highlighted_sections(text: str, N: int) -> bool:
    """Matches of `\\*(.*?)\\*`: each line's asterisks, paired left to right (an empty `**` counts)."""
    return sum(line.count("*") // 2 for line in text.split("\n")) >= N


@function
def validate_sections(text: str, N: int, section_splitter: str) -> bool:
    if not section_splitter:
        raise RowError("section_splitter is empty")
    sections = text.split(section_splitter)
    return len(sections) - (sections[0] == "") == N


@function
def validate_json_format(text: str) -> bool:
    try:
        json.loads(text)  # the whole answer, no code fence allowed (IFEval strips one)
    except (ValueError, RecursionError):
        return False
    return True


@function
def validate_repeat_prompt(text: str, original_prompt: str) -> bool:
    return text.startswith(original_prompt)


@function
def validate_two_responses(text: str) -> bool:
    if text.count("******") != 1:
        return False
    first, second = text.split("******")
    return first.strip() != second.strip()


@function
def validate_uppercase(text: str) -> bool:
    return text == text.upper()


@function
def validate_lowercase(text: str) -> bool:
    return text == text.lower()


@function
def validate_frequency_capital_words(text: str, N: int, quantifier: str) -> bool:
    return _quantified(len(_CAPITAL_WORD.findall(text)), N, quantifier, around=max(round(N * 0.1), 1))


@function
def validate_end(text: str, end_phrase: str) -> bool:
    return text.endswith(end_phrase)


@function
def validate_quotation(text: str) -> bool:
    return text.startswith('"') and text.endswith('"')


@function
def validate_no_commas(text: str) -> bool:
    return CHECKERS["punctuation:no_comma"](text, {})
