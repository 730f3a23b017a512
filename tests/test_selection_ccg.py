"""The Concept Consistency Graph and RAKE key phrases."""
from posttrain.selection.ccg import STOPWORDS, ConceptGraph, key_phrases


def test_ccg_rejects_two_known_but_unlinked_concepts():
    graph = ConceptGraph()
    assert graph.offer(["photosynthesis", "chlorophyll"]) is None
    assert graph.offer(["tax law", "deductions"]) is None
    # the documented conflict: both concepts are in the graph, but no accepted sample linked them
    assert graph.offer(["photosynthesis", "tax law"]) == ("photosynthesis", "tax law")
    assert "tax law" not in graph.links["photosynthesis"]  # a rejected sample adds no links


def test_ccg_accepts_known_linked_concepts_and_new_ones():
    graph = ConceptGraph()
    graph.offer(["photosynthesis", "chlorophyll"])
    assert graph.offer(["photosynthesis", "chlorophyll", "light"]) is None  # linked pair + a new concept
    assert graph.offer(["light", "tax law"]) is None                        # one known concept only
    assert graph.links["light"] == {"photosynthesis", "chlorophyll", "tax law"}
    assert graph.offer(["chlorophyll", "tax law"]) == ("chlorophyll", "tax law")


def test_rake_on_the_papers_example():
    text = ("Compatibility of systems of linear constraints over the set of natural numbers. Criteria of "
            "compatibility of a system of linear Diophantine equations, strict inequations, and nonstrict "
            "inequations are considered.")
    # degree/frequency: linear 5/2, diophantine 3, equations 3, constraints 2, natural 2, numbers 2, strict 2,
    # inequations 4/2 -> 8.5, 4.5, then three phrases at 4.0 in order of appearance (RAKE paper: same scores)
    assert key_phrases(text, 4) == ["linear diophantine equations", "linear constraints", "natural numbers",
                                    "strict inequations"]
    assert all(w not in STOPWORDS for p in key_phrases(text, 20) for w in p.split())
    assert key_phrases("", 3) == [] and key_phrases("12 + 34", 3) == []
    # unset: every phrase, as the released code takes them (11 distinct phrases here)
    assert key_phrases(text, None)[:4] == key_phrases(text, 4) and len(key_phrases(text, None)) == 11
