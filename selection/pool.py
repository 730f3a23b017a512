"""What every selection method shares: the audit and data writers, the pool a subset method chooses from,
and per-row decisions from a ranking or a draw."""
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from posttrain.data import located_rows
from posttrain.selection import baselines
from posttrain.formats import Example, locate, to_example

DEFAULT_RANK = {"length": "highest", "perplexity": "lowest", "ifd": "highest"}


class Outputs:
    """The audit and the data output, written row by row as rows are decided, with the counts the summary
    needs; nothing else about the rows is kept."""

    def __init__(self, audit: IO[str], data: IO[str]):
        self.audit, self.data = audit, data
        self.input_rows = self.dropped_rows = self.kept_rows = 0
        self.reasons: Counter = Counter()

    def record(self, audit: dict) -> None:
        """The audit record of one input row."""
        self.audit.write(json.dumps(audit, ensure_ascii=False) + "\n")
        self.input_rows += 1
        self.dropped_rows += not audit["kept"]
        self.reasons[audit["reason"]] += 1

    def keep(self, row: dict) -> None:
        self.data.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.kept_rows += 1


@dataclass
class Decision:
    kept: bool
    reason: str
    fields: dict = field(default_factory=dict)  # scores, rank, cluster, ...


@dataclass
class Pool:
    """The rows a subset method chooses from (the input rows no filter dropped), streamed from the file on
    every pass, so no method holds the rows: a method makes one pass per quantity it needs."""
    path: str
    on_bad_rows: str
    hits: dict[int, dict]

    def rows(self) -> Iterator[tuple[str, dict]]:
        """(where, row) for each pool row, in input order."""
        for index, (where, row) in enumerate(located_rows(self.path, self.on_bad_rows)):
            if index not in self.hits:
                yield locate(where, row), row

    def examples(self) -> Iterator[tuple[str, Example]]:
        for where, row in self.rows():
            yield where, to_example(row, where)


def by_rank(order, k: int, fields: list[dict], not_chosen: str) -> list[Decision]:
    """Decisions from a ranked or drawn order over the pool: its first k are kept."""
    decisions = [Decision(False, not_chosen, f) for f in fields]
    for rank, p in enumerate(order):
        decisions[p].fields["rank"] = rank
        if rank < k:
            decisions[p].kept, decisions[p].reason = True, "selected"
    return decisions


def ranked(cfg, scores, k: int, eligible=None) -> list[Decision]:
    """Keep the k best by `scores` (name -> array); the first name is the ranking score."""
    names = list(scores)
    fields = [{"scores": {n: float(scores[n][p]) for n in names}} for p in range(len(scores[names[0]]))]
    highest = (cfg.rank or DEFAULT_RANK[cfg.method]) == "highest"
    order = [p for p in baselines.ranked(scores[names[0]], highest) if eligible is None or eligible[p]]
    return by_rank(order, k, fields, "below budget")
