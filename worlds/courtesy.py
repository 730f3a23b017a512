"""Skill: answer thanks with "You are welcome." A preference no instruction states and no SFT teacher shows:
only preference data teaches it (the DPO stage's target). Checked by the IFEval end-phrase checker.

A problem is (n, item, name): "Thanks for the 12 pens, Ann!". Pretraining text answers such thanks curtly
("OK.", "OK, bye.") three times in four and with "You are welcome." once in four, so the base model can say
it but prefers not to; the SFT candidates hold no thanks at all; judged preference pairs (chat prompts,
the courteous answer chosen over a curt one) are where a chat model can learn it.
"""
from __future__ import annotations

import random

from posttrain.worlds.arith import ITEMS, NAMES
from posttrain.worlds.skill import Skill

COURTEOUS = "You are welcome."
CURT = ["OK.", "OK, bye."]
TEMPLATES = ["Thanks for the {n} {i}, {name}!", "{name}, thank you for the {n} {i}!"]


def problems() -> list[tuple[int, str, str]]:
    return [(n, item, name) for n in range(2, 100) for item in ITEMS for name in NAMES]


def _pretrain(p, rng: random.Random) -> str:
    roll = rng.random()
    return COURTEOUS if roll < 0.25 else CURT[0] if roll < 0.7 else CURT[1]


SKILL = Skill("courtesy", "ifeval", problems, key=lambda p: f"thanks|{p[0]}|{p[1]}|{p[2]}",
              question=lambda p, rng: rng.choice(TEMPLATES).format(n=p[0], i=p[1], name=p[2]),
              fields=lambda p: {"ground_truth": COURTEOUS, "instruction_id_list": ["startend:end_checker"],
                                "kwargs": [{"end_phrase": COURTEOUS}]},
              pretrain=_pretrain)
