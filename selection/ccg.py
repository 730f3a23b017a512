"""PASER's negative-transfer filter: key-phrase concepts (RAKE) and the Concept Consistency Graph.

RAKE (Rose et al. 2010), implemented here with a built-in English stopword list because the maintained
packages need NLTK data that cannot be downloaded offline: the text is split at punctuation and
stopwords into candidate phrases (at most 3 words, no pure numbers); a word scores degree/frequency over
the candidates, a phrase the sum of its words; the concepts are all the phrases (PASER's released code:
every ranked phrase of instruction, input and output) or the top ones.

The graph rejects a sample when two of its concepts are already in the graph but not linked to each
other (the sample would join concepts that earlier accepted samples kept apart); otherwise it accepts the
sample and links all of its concepts pairwise.
"""
import itertools
import re

STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just let me more most my myself no nor not now of off
on once only or other our ours ourselves out over own same she should so some such than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when
where which while who whom why will with would you your yours yourself yourselves also get gets got may might
must shall us many much every given give gives one two using use used make makes made
""".split())
SPLITTERS = re.compile(r"[.!?,;:()\[\]{}\"\n\t]|\s[-–—]\s")
WORD = re.compile(r"[a-z][a-z0-9'+-]*|\d+")
MAX_PHRASE_WORDS = 3


def _candidate_phrases(text: str) -> list[tuple[str, ...]]:
    phrases = []
    for chunk in SPLITTERS.split(text.lower()):
        current: list[str] = []
        for word in WORD.findall(chunk) + [""]:  # "" flushes the last phrase
            if word and word not in STOPWORDS and not word.isdigit():
                current.append(word)
                continue
            if current and len(current) <= MAX_PHRASE_WORDS:
                phrases.append(tuple(current))
            current = []
    return phrases


def key_phrases(text: str, top: int | None) -> list[str]:
    """The `top` RAKE key phrases of `text` (None: all of them, as PASER's released code takes), best first
    (ties: first appearance)."""
    phrases = _candidate_phrases(text)
    freq: dict[str, int] = {}
    degree: dict[str, int] = {}
    for phrase in phrases:
        for word in phrase:
            freq[word] = freq.get(word, 0) + 1
            degree[word] = degree.get(word, 0) + len(phrase)
    scores: dict[str, float] = {}
    for phrase in phrases:
        scores.setdefault(" ".join(phrase), sum(degree[w] / freq[w] for w in phrase))
    return sorted(scores, key=lambda p: -scores[p])[:top]  # sorted is stable: ties keep first appearance


class ConceptGraph:
    def __init__(self):
        self.links: dict[str, set[str]] = {}

    def conflict(self, concepts: list[str]) -> tuple[str, str] | None:
        """The first pair of concepts that are both in the graph but not linked, if any."""
        known = [c for c in dict.fromkeys(concepts) if c in self.links]
        return next(((a, b) for a, b in itertools.combinations(known, 2) if b not in self.links[a]), None)

    def offer(self, concepts: list[str]) -> tuple[str, str] | None:
        """Accept the sample (link its concepts) unless it conflicts; return the conflicting pair if rejected."""
        clash = self.conflict(concepts)
        if clash is None:
            unique = list(dict.fromkeys(concepts))
            for c in unique:
                self.links.setdefault(c, set()).update(x for x in unique if x != c)
        return clash
