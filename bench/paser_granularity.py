"""PASER's budget rule depends on how finely the clustering splits each capability: one synthetic pool, the
same per-row JSD, clustered at different granularities, and the rows each capability is given.

The pool imitates the tiny world's recovery experiment (docs/experiments.md): 2,000 rows, arithmetic 1,000
(least hurt), format 500 and code 500 (most hurt), budget 200. Cluster k gets floor(B * CDS_k / sum CDS) with
CDS_k its mean JSD, so a capability's share grows with the number of clusters it is cut into, whatever its
size or damage. Run:
    OMP_NUM_THREADS=1 python bench/paser_granularity.py
"""
import numpy as np

from posttrain.selection.paser import select

SKILLS = {"arithmetic": (1000, 0.020), "format": (500, 0.030), "code": (500, 0.030)}  # rows, mean JSD
BUDGET = 200
GRANULARITIES = {"one cluster per skill": {"arithmetic": 1, "format": 1, "code": 1},
                 "arithmetic cut finer (as the eigengap did)": {"arithmetic": 12, "format": 5, "code": 3},
                 "code cut finer": {"arithmetic": 3, "format": 5, "code": 12}}


def pool(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    skill = np.repeat(np.arange(len(SKILLS)), [n for n, _ in SKILLS.values()])
    jsd = np.concatenate([rng.gamma(4.0, mean / 4.0, size=n) for n, mean in SKILLS.values()])
    return skill, jsd


def labels_for(skill: np.ndarray, splits: dict[str, int], seed: int = 0) -> np.ndarray:
    """Each skill's rows dealt at random into its number of clusters (the clusters stay pure skills)."""
    rng = np.random.default_rng(seed)
    labels, first = np.empty(len(skill), dtype=int), 0
    for s, name in enumerate(SKILLS):
        rows = np.flatnonzero(skill == s)
        labels[rows] = first + rng.permutation(len(rows)) % splits[name]
        first += splits[name]
    return labels


def main() -> None:
    skill, jsd = pool()
    tokens = np.full(len(skill), 50)
    print(f"pool: {', '.join(f'{k} {n} rows (mean JSD {m})' for k, (n, m) in SKILLS.items())}; budget {BUDGET}\n")
    print("| clustering | clusters (arith / format / code) | budget: arithmetic | format | code | unallocated |")
    print("|---|---|---|---|---|---|")
    for name, splits in GRANULARITIES.items():
        labels = labels_for(skill, splits)
        _, table = select(labels, jsd, tokens, None, BUDGET)
        skill_of = {c: skill[labels == c][0] for c in range(labels.max() + 1)}
        per_skill = [sum(t["budget"] for t in table if skill_of[t["cluster"]] == s) for s in range(len(SKILLS))]
        print(f"| {name} | {' / '.join(str(splits[k]) for k in SKILLS)} | "
              f"{' | '.join(str(b) for b in per_skill)} | {BUDGET - sum(per_skill)} |")
    total = [jsd[skill == s].sum() for s in range(len(SKILLS))]  # not PASER's rule: for comparison only
    by_total = [int(np.floor(BUDGET * t / sum(total))) for t in total]
    print(f"| (not PASER) budget by summed JSD, any pure clustering | - | {' | '.join(map(str, by_total))} | "
          f"{BUDGET - sum(by_total)} |")


if __name__ == "__main__":
    main()
