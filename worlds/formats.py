"""Skill: follow a format instruction on a short word list, checked by `ifeval_words`: the IFEval checker of
the format and the words themselves, in the order asked.

A problem is (kind, words, phrase): list 2-4 words as bullet points (`number_bullet_lists`), wrap them in
double quotes (`startend:quotation`), end with a given phrase (`startend:end_checker`), or put them under
a <<title>> (`detectable_format:title`). A response scores 1 when it follows the format *and* lists exactly
the given words in the given order (a lead-in line such as "Sure, here they are:" is no content; it only
breaks the quotation rule): IFEval alone would pass `<<Cat>>\ncat pen pen sun` for "cat, hat, red, owl".
Teachers: `careful` (always right), `chatty` (opens with "Sure, here they are:", which breaks the
quotation rule), `sloppy` (forgets the instruction half of the time).
"""
from __future__ import annotations

import itertools
import random

from posttrain.worlds.skill import Skill

WORDS = ["cat", "sun", "map", "red", "cup", "box", "hat", "pen", "egg", "owl"]
PHRASES = ["That is all.", "The end.", "Bye now."]
KINDS = {  # kind -> (question template, IFEval instruction id)
    "bullets": ("List these words as bullet points: {w}.", "detectable_format:number_bullet_lists"),
    "quotes": ("Write these words wrapped in double quotes: {w}.", "startend:quotation"),
    "end": ("Write these words, then end with the phrase \"{phrase}\": {w}.", "startend:end_checker"),
    "title": ("Write these words under a title in double angular brackets: {w}.", "detectable_format:title"),
}


def problems() -> list[tuple[str, tuple[str, ...], str]]:
    lists = [w for k in (2, 3, 4) for w in itertools.permutations(WORDS, k)]
    return [(kind, words, phrase) for kind in KINDS for words in lists
            for phrase in (PHRASES if kind == "end" else [""])]


def question(p, rng: random.Random) -> str:
    kind, words, phrase = p
    return KINDS[kind][0].format(w=", ".join(words), phrase=phrase)


def fields(p) -> dict:
    kind, words, phrase = p
    kwargs = {"bullets": {"num_bullets": len(words)}, "end": {"end_phrase": phrase}}.get(kind, {})
    return {"ground_truth": follow(p), "instruction_id_list": [KINDS[kind][1]], "kwargs": [kwargs]}


def follow(p) -> str:
    kind, words, phrase = p
    plain = " ".join(words)
    return {"bullets": "\n".join(f"* {w}" for w in words), "quotes": f'"{plain}"',
            "end": f"{plain} {phrase}", "title": f"<<{words[0].capitalize()}>>\n{plain}"}[kind]


TEACHERS = {
    "careful": lambda p, rng: follow(p),
    "chatty": lambda p, rng: "Sure, here they are:\n" + follow(p),
    "sloppy": lambda p, rng: follow(p) if rng.random() < 0.5 else " ".join(p[1]),
}

SKILL = Skill("instruction following", "ifeval_words", problems, key=lambda p: f"fmt|{p[0]}|{' '.join(p[1])}|{p[2]}",
              question=question, fields=fields, teachers=TEACHERS)
