"""bench/paser_real.py's tables from made-up per-item NLLs: the perplexity per arm pools seeds by tokens, and a
comparison pairs the same items of the same seed (the unpruned model's once-measured items pair with every seed)."""
import importlib.util
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("paser_real", REPO / "bench" / "paser_real.py")
paser_real = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paser_real)


def records(per_token: list[float], tokens: int = 10) -> list[dict]:
    tasks = list(paser_real.TASKS)
    return [{"id": f"i{i}", "task": tasks[i % len(tasks)], "nll": x * tokens, "tokens": tokens}
            for i, x in enumerate(per_token)]


def test_perplexity_pools_tokens_and_the_comparison_pairs_items_within_seeds():
    base = [1.0 + 0.01 * i for i in range(30)]
    original = records(base)
    arms = {"original": {0: original, 1: original},
            "none": {0: records([x + 0.5 for x in base]), 1: records([x + 0.7 for x in base])},
            "random": {0: records([x + 0.4 for x in base]), 1: records([x + 0.4 if i % 2 else x + 0.8
                                                                        for i, x in enumerate(base)])}}
    table = paser_real.ppl_table(arms, [0, 1])
    mean = sum(base) / len(base)
    none_row = next(line for line in table.splitlines() if line.startswith("| none |"))
    assert f"**{math.exp(mean + 0.6):.2f}**" in none_row                        # both seeds' tokens pooled
    assert f"{math.exp(mean + 0.5):.2f} / {math.exp(mean + 0.7):.2f}" in none_row  # then per seed
    compare = paser_real.compare_table(arms)
    lines = {line.split(" |")[0]: line for line in compare.splitlines()}
    assert f"**{math.exp(0.6):.3f}**" in lines["| none vs original"] and "0 / 60" in lines["| none vs original"]
    # random is 0.1 lower in seed 0 on every item; in seed 1 0.3 lower on half and 0.1 higher on the other half
    assert f"**{math.exp(-0.1):.3f}**" in lines["| random vs none"] and "45 / 60" in lines["| random vs none"]
    with pytest.raises(AssertionError):  # items that do not pair are an error, not a silent mismatch
        paser_real.compare_table({"original": {0: original}, "none": {0: records(base[1:] + [1.0])[::-1]}})


def test_generation_tables_count_the_seed_free_arms_once_and_pair_the_rest(tmp_path):
    import json

    def write_eval(seed: int, scores: dict[str, list[float]]):
        folder = tmp_path / f"wanda-seed{seed}" / "eval" / "results"
        results = {"models": {}}
        for arm, values in scores.items():
            samples = folder / "samples" / arm / "ifeval.jsonl"
            samples.parent.mkdir(parents=True, exist_ok=True)
            samples.write_text("".join(json.dumps({"id": i, "score": v}) + "\n" for i, v in enumerate(values)))
            results["models"][arm] = {"tasks": {"ifeval": {"score": sum(values) / len(values),
                                                           "samples": str(samples.relative_to(folder))}}}
        (folder / "results.json").write_text(json.dumps(results))

    write_eval(0, {"original": [1, 1, 1, 0], "none": [1, 0, 0, 0], "random": [1, 1, 0, 0]})
    write_eval(1, {"original": [1, 1, 1, 0], "none": [1, 0, 0, 0], "random": [1, 1, 1, 0]})
    table = paser_real.generation_tables(tmp_path, "wanda", [0, 1])
    rows = {line.split(" |")[0]: line for line in table.splitlines()}
    assert "75.0 (" in rows["| original"] and "n=4)" in rows["| original"]   # once, not per seed
    assert "62.5 (" in rows["| random"] and "n=8)" in rows["| random"]       # both seeds' items
    assert "+37.5" in rows["| random − none"] and "3 fixed / 0 broken" in rows["| random − none"]
