"""Filters applied before selection: MinHash near-duplicate removal and n-gram decontamination.

Both work on lower-cased word sequences (`\\w+` runs). Dedup keeps the first occurrence of a group of
near-duplicates (datasketch MinHash LSH over word 5-gram shingles). Decontamination drops a training row
that shares any word n-gram (13 by default) with an item of an evaluation set; eval items shorter than n
words cannot be matched this way and are counted as unchecked.

The eval sets are the eval tasks (posttrain.eval.tasks.TASKS, the one list): decontamination names tasks
as an eval stage does, so `tasks: ${stages.eval.tasks}` follows exactly what a recipe evaluates.
"""
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.data import iter_rows, located_rows
from posttrain.eval.tasks import TASKS, TaskSpec, prompt_of
from posttrain.formats import locate, row_text
from posttrain.selection.options import DedupOptions
from posttrain.stage import Dataset

WORD = re.compile(r"\w+")
DEDUP_BATCH = 1024
EXAMPLES_PER_SET = 20  # the report lists them: enough for every planted problem
# One task per eval set in ../shared/data (gsm8k_0shot reads the same file as gsm8k_8shot).
DEFAULT_TASKS = list({t.source: name for name, t in reversed(TASKS.items()) if t.source}.values())[::-1]


@dataclass
class EvalFile:
    name: str
    path: Dataset
    fields: list[str] = field(default_factory=list, metadata={"help": "text fields; empty: question/problem/prompt/instruction/text"})


@dataclass
class DecontaminateOptions:
    ngram: int = field(default=13, metadata={"ge": 1})
    tasks: list[str | TaskSpec] = field(default_factory=lambda: list(DEFAULT_TASKS), metadata={
        "may_be_empty": True,
        "help": "eval tasks whose prompts training rows must not share an n-gram with: names, or the eval "
                "stage's own list (${stages.NAME.tasks}); lm_eval tasks are not checked (named in the summary)"})
    extra: list[EvalFile] = field(default_factory=list)


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

class Contamination:
    """An index of the word n-grams of named eval sets."""

    def __init__(self, n: int):
        self.n = n
        self.owners: dict[str, set[str]] = {}
        self.stats: dict[str, dict] = {}  # per eval set: items, short_items_unchecked, matched_rows, examples

    def add_set(self, name: str, texts: Iterable[str]) -> None:
        stats = self.stats.setdefault(name, {"items": 0, "short_items_unchecked": 0, "matched_rows": 0, "examples": []})
        for text in texts:
            tokens = words(text)
            stats["items"] += 1
            if len(tokens) < self.n:
                stats["short_items_unchecked"] += 1
            for gram in ngrams(tokens, self.n):
                self.owners.setdefault(gram, set()).add(name)

    def add_file(self, name: str, path, fields: list[str]) -> None:
        self.add_set(name, (prompt_of(r, fields) for r in iter_rows(path)))

    def add_task(self, spec: "TaskSpec") -> None:
        self.add_set(spec.label or spec.name, TASKS[spec.name].prompt_texts(spec.source))

    def matches(self, text: str, row_id: str = "") -> list[str]:
        """Names of the eval sets sharing an n-gram with `text` (sorted); counted in `stats`, with the first
        few matching rows' ids as examples (the report shows them, so it needs no other file)."""
        found = set()
        for gram in ngrams(words(text), self.n):
            found |= self.owners.get(gram, set())
        for name in found:
            self.stats[name]["matched_rows"] += 1
            if len(self.stats[name]["examples"]) < EXAMPLES_PER_SET:
                self.stats[name]["examples"].append(row_id)
        return sorted(found)


def task_specs(opts: DecontaminateOptions) -> list[TaskSpec]:
    """The decontamination tasks as TaskSpecs (a plain name is a task with its default source)."""
    return [TaskSpec(t) if isinstance(t, str) else t for t in opts.tasks]


def check_tasks(opts: DecontaminateOptions) -> list[tuple[str, str]]:
    from posttrain.schema import suggest

    return [(f"decontaminate.tasks[{i}]", f"unknown task '{s.name}'{suggest(s.name, TASKS)}; built-in: {', '.join(TASKS)}")
            for i, s in enumerate(task_specs(opts)) if s.name not in TASKS and not s.name.startswith("lm_eval:")]


def files(opts: DecontaminateOptions) -> list[Path]:
    """The eval sets' files decontamination reads (the `extra` ones are Dataset inputs already)."""
    return [f for spec in task_specs(opts) if spec.name in TASKS for f in TASKS[spec.name].files(spec.source, shots=0)]


def contamination(opts: DecontaminateOptions) -> tuple[Contamination, list[str]]:
    """The n-gram index of the options' eval sets, and the tasks it cannot check (lm_eval ones)."""
    index, unchecked = Contamination(opts.ngram), []
    for spec in task_specs(opts):
        if spec.name in TASKS:
            index.add_task(spec)
        else:
            unchecked.append(spec.label or spec.name)
    for extra in opts.extra:
        index.add_file(extra.name, extra.path, extra.fields)
    return index, unchecked


def apply(path: str, on_bad_rows: str, dedup_opts: DedupOptions | None,
          decontaminate: DecontaminateOptions | None) -> tuple[dict[int, dict], dict]:
    """Audit fields of the rows dropped before selection (index -> fields), and the filters' summary."""
    summary = {"dedup": None, "decontamination": None}
    if dedup_opts is None and decontaminate is None:
        return {}, summary
    index, unchecked = contamination(decontaminate) if decontaminate else (None, [])
    dedup = NearDuplicates(dedup_opts.threshold, dedup_opts.num_perm, dedup_opts.shingle) if dedup_opts else None
    hits: dict[int, dict] = {}
    pending: list[tuple[int, str]] = []

    def flush():
        for (i, _), dup_of in zip(pending, dedup.check([str(i) for i, _ in pending], [t for _, t in pending])):
            if dup_of is not None:
                hits[i] = {"filter": "dedup", "reason": "near-duplicate", "duplicate_of": int(dup_of)}
        pending.clear()

    for i, (where, row) in enumerate(located_rows(path, on_bad_rows)):
        text = row_text(row, locate(where, row))
        # a row without an id (or with a null one) is named by its index, as in the audit
        sets = index.matches(text, str(row["id"]) if row.get("id") is not None else f"row {i}") if index else []
        if sets:
            hits[i] = {"filter": "decontaminate", "reason": "contaminated", "eval_sets": sets}
        elif dedup:
            pending.append((i, text))
            if len(pending) == DEDUP_BATCH:
                flush()
    if dedup:
        flush()
        summary["dedup"] = {"threshold": dedup_opts.threshold, "num_perm": dedup_opts.num_perm,
                            "shingle": dedup_opts.shingle, "dropped": sum(h["filter"] == "dedup" for h in hits.values())}
    if index:
        summary["decontamination"] = {"ngram": index.n, "per_eval_set": index.stats,
                                      "unchecked_tasks": unchecked,
                                      "dropped": sum(h["filter"] == "decontaminate" for h in hits.values())}
    return hits, summary

