"""The `ifeval_words` verifier: an IFEval format instruction applied to given content, e.g. "Write these
words under a title in double angular brackets: cat, hat, red, owl." Score 1 when the IFEval instructions
are followed (strict, as `ifeval`) and the response lists exactly the words the `ground_truth` lists, in
its order. IFEval alone checks only the wrapper: `<<Cat>>\\ncat pen pen sun` has a title, so `ifeval`
passes it although it lists the wrong words.

Row fields: `instruction_id_list` and `kwargs` (as `ifeval`), and `ground_truth`, a response that follows
the instruction with the right words (the tiny world's format skill writes it). The words of a response
are its lowercase letter runs, leaving out what the format adds: a lead-in line ending in ":" ("Sure, here
they are:"), the first <<title>>, bullet markers and quotes, and an `end_phrase` its kwargs name.
"""
from __future__ import annotations

import re

from posttrain.rewards.core import Verdict, require_field
from posttrain.rewards.ifeval import IfevalVerifier
from posttrain.rewards.registry import register_verifier

TITLE = re.compile(r"<<[^<>\n]*>>")


def listed_words(text: str, end_phrases: list[str] = ()) -> list[str]:
    """The content words of a response, in order (see the module docstring for what is left out)."""
    body = "\n".join(line for line in text.strip().split("\n") if not line.rstrip().endswith(":"))
    body = TITLE.sub(" ", body, count=1).rstrip()
    for phrase in end_phrases:
        if phrase and body.endswith(phrase):
            body = body[: -len(phrase)]
    return re.findall(r"[a-z]+", body.lower())


class IfevalWordsVerifier(IfevalVerifier):
    name = "ifeval_words"

    def check(self, text: str, row: dict) -> Verdict:
        formatted = super().check(text, row)
        phrases = [kw.get("end_phrase", "") for kw in row.get("kwargs") or [] if isinstance(kw, dict)]
        wanted = listed_words(str(require_field(row, "ground_truth")), phrases)
        got = listed_words(text, phrases)
        words = "the words in order" if got == wanted else f"words {' '.join(got[:12])!r}, wanted {' '.join(wanted)!r}"
        return Verdict(float(formatted.score == 1.0 and got == wanted), f"{formatted.reason}; {words}")


register_verifier("ifeval_words", IfevalWordsVerifier)
