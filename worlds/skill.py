"""What every skill of the tiny world provides, and the held-out split they share.

A skill is a finite set of problems (hashable tuples). A fixed hash of a problem's key puts about one in
ten into the held-out split, which the training generators never emit. For each problem a skill gives
the question, the fields its verifier reads (`ground_truth` and, e.g., IFEval instruction ids or test
calls), its SFT teachers (each answers in its own style and some are sometimes wrong; a skill that only
preference data teaches has none) and the answers its pretraining text shows.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

Problem = tuple
Teacher = Callable[[Problem, random.Random], str]


def is_heldout(key: str) -> bool:
    return hashlib.sha256(key.encode()).digest()[0] % 10 == 0


@dataclass(frozen=True)
class Skill:
    name: str                    # also the eval task's skill label
    verifier: str                # a posttrain.rewards verifier
    problems: Callable[[], list[Problem]]
    key: Callable[[Problem], str]                     # what the held-out hash reads
    question: Callable[[Problem, random.Random], str]
    fields: Callable[[Problem], dict]                 # ground_truth + what the verifier needs
    teachers: dict[str, Teacher] = field(default_factory=dict)   # SFT candidates' authors
    pretrain: Teacher | None = None                   # the answers pretraining text shows (default: a teacher)

    @cached_property
    def split(self) -> tuple[list[Problem], list[Problem]]:
        """(training problems, held-out problems), each in the skill's fixed order."""
        train, held = [], []
        for p in self.problems():
            (held if is_heldout(self.key(p)) else train).append(p)
        return train, held

    def pretrain_answer(self, p: Problem, rng: random.Random) -> str:
        if self.pretrain is not None:
            return self.pretrain(p, rng)
        return self.teachers[rng.choice(sorted(self.teachers))](p, rng)
