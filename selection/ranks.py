"""Model scoring split across the ranks of a launched select stage.

Under a launcher (torch.distributed initialised, world size > 1) rank 0 runs the stage as one process would:
it alone reads the data, keeps the score log and writes the outputs. Each batch of encoded sequences it would
score is dealt out instead: sorted by length, then every world_size-th one to each rank (so every rank gets a
similar share of long and short ones); each rank scores its share with its own copy of the model and rank 0
puts the gathered scores back in place. The other ranks only score what they are sent (`follow`) until rank 0
says it is done (`release`). The scores are the one-process scores up to batch padding, which GRAPE's rounding
to 6 decimals absorbs. Object collectives run on gloo (CPU) and NCCL alike.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

Score = Callable[[list], list[float]]
_sent: list[int] = []  # rank 0: sequences dealt to each rank so far


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_follower() -> bool:
    return world()[0] != 0


def shared(score: Score) -> Score:
    """`score` as rank 0 calls it, split across the ranks when there are several; unchanged in one process
    and on the other ranks (which score their shares with it)."""
    rank, size = world()
    if size == 1 or rank != 0:
        return score
    _sent[:] = [0] * size

    def split(encoded: list) -> list[float]:
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i].ids), i))
        shares = [order[r::size] for r in range(size)]
        gathered = _exchange([[encoded[i] for i in share] for share in shares], score)
        scores = [0.0] * len(encoded)
        for share, got in zip(shares, gathered):
            for i, s in zip(share, got):
                scores[i] = s
        for r, share in enumerate(shares):
            _sent[r] += len(share)
        return scores
    return split


def follow(score: Score) -> None:
    """A rank other than 0: score each share rank 0 sends, until it sends None."""
    while _exchange(None, score) is not None:
        pass


def release() -> list[int]:
    """Rank 0, after its last batch: let the other ranks go. Returns how many sequences each rank scored
    ([] in one process)."""
    if world()[1] == 1:
        return []
    _exchange([None] * world()[1], lambda encoded: [])
    return list(_sent)


def _exchange(shares: list | None, score: Score) -> Any:
    """One round: rank 0 scatters `shares` (one per rank), every rank scores its own, rank 0 gathers them.
    Returns the gathered scores on rank 0, on the others what they were sent (None: the end)."""
    import torch.distributed as dist

    rank, size = world()
    work: list = [None]
    dist.scatter_object_list(work, shares, src=0)
    result = None if work[0] is None else score(work[0]) if work[0] else []
    gathered = [None] * size if rank == 0 else None
    dist.gather_object(result, gathered, dst=0)
    return gathered if rank == 0 else work[0]
