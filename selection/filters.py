"""Filters applied before selection: MinHash near-duplicate removal and n-gram decontamination.

Both work on lower-cased word sequences (`\\w+` runs). Dedup keeps the first occurrence of a group of
near-duplicates (datasketch MinHash LSH over word 5-gram shingles). Decontamination drops a training row
that shares any word n-gram (13 by default) with an item of an evaluation set; eval items shorter than n
words cannot be matched this way and are counted as unchecked.
"""
import re
from collections.abc import Iterable, Iterator

from posttrain.data import iter_rows, shared_file

WORD = re.compile(r"\w+")

# The eval sets posttrain evaluates on, in ../shared/data: (file, the fields holding the prompt).
BUILTIN_EVAL_SETS = {
    "gsm8k": ("gsm8k/test.jsonl", ["question"]),
    "math500": ("math500/test.jsonl", ["problem"]),
    "ifeval": ("ifeval/input_data.jsonl", ["prompt"]),
    "humaneval": ("humaneval/HumanEval.jsonl.gz", ["prompt"]),
    "mbpp": ("mbpp/mbpp.jsonl", ["text"]),
}
PROMPT_FIELDS = ("question", "problem", "prompt", "instruction", "text")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> Iterator[str]:
    return (" ".join(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


# ---------- near-duplicates ----------

class NearDuplicates:
    """Streaming near-duplicate detection: each text is compared with every text kept before it."""

    def __init__(self, threshold: float, num_perm: int, shingle: int, seed: int = 1):
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.num_perm, self.shingle, self.seed = num_perm, shingle, seed

    def shingles(self, text: str) -> list[bytes]:
        tokens = words(text)
        if len(tokens) < self.shingle:  # a short text is one shingle
            return [" ".join(tokens).encode()]
        return [s.encode() for s in set(ngrams(tokens, self.shingle))]

    def check(self, keys: list[str], texts: list[str]) -> list[str | None]:
        """For each text in order: the key of an earlier near-duplicate, or None (then it is kept and indexed)."""
        from datasketch import MinHash

        hashes = MinHash.bulk([self.shingles(t) for t in texts], num_perm=self.num_perm, seed=self.seed)
        result = []
        for key, minhash in zip(keys, hashes):
            hits = self.lsh.query(minhash)
            if hits:
                result.append(min(hits))
            else:
                self.lsh.insert(key, minhash)
                result.append(None)
        return result


# ---------- decontamination ----------

def eval_prompts(row: dict, fields: list[str]) -> str:
    """The text of an eval item: the named fields, else the first usual prompt field, else user turns."""
    if fields:
        return "\n".join(str(row[f]) for f in fields if f in row)
    for f in PROMPT_FIELDS:
        if isinstance(row.get(f), str):
            return row[f]
    messages = row.get("messages") or (row.get("prompt") if isinstance(row.get("prompt"), list) else [])
    return "\n".join(m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user")


class Contamination:
    """An index of the word n-grams of named eval sets."""

    def __init__(self, n: int):
        self.n = n
        self.owners: dict[str, set[str]] = {}
        self.stats: dict[str, dict] = {}

    def add_set(self, name: str, texts: Iterable[str]) -> None:
        stats = self.stats.setdefault(name, {"items": 0, "short_items_unchecked": 0, "matched_rows": 0})
        for text in texts:
            tokens = words(text)
            stats["items"] += 1
            if len(tokens) < self.n:
                stats["short_items_unchecked"] += 1
            for gram in ngrams(tokens, self.n):
                self.owners.setdefault(gram, set()).add(name)

    def add_file(self, name: str, path, fields: list[str]) -> None:
        self.add_set(name, (eval_prompts(r, fields) for r in iter_rows(path)))

    def add_builtin(self, name: str) -> None:
        relative, fields = BUILTIN_EVAL_SETS[name]
        self.add_file(name, shared_file(relative), fields)

    def matches(self, text: str) -> list[str]:
        """Names of the eval sets sharing an n-gram with `text` (sorted); counted in `stats`."""
        found = set()
        for gram in ngrams(words(text), self.n):
            found |= self.owners.get(gram, set())
        for name in found:
            self.stats[name]["matched_rows"] += 1
        return sorted(found)
