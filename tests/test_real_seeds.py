"""bench/real_seeds.py's tables: the seed-free base model's items count once, a fine-tuned model's once per seed, and
a change from the base pairs the base's items with each seed's."""
import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import real_seeds  # noqa: E402


def _eval(folder, scores: dict[str, list[float]]):
    results = {"models": {}}
    for model, values in scores.items():
        samples = folder / "results" / "samples" / model / "gsm8k_0shot.jsonl"
        samples.parent.mkdir(parents=True, exist_ok=True)
        samples.write_text("".join(json.dumps({"id": i, "score": v}) + "\n" for i, v in enumerate(values)))
        results["models"][model] = {"tasks": {"gsm8k_0shot": {"score": sum(values) / len(values),
                                                              "samples": str(samples.relative_to(folder / "results"))}}}
    (folder / "results" / "results.json").write_text(json.dumps(results))


def test_base_counts_once_and_pairs_with_every_seed(tmp_path):
    base = [0.0, 0.0, 1.0, 0.0]
    runs = []
    for seed, sft in enumerate([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]]):
        run = tmp_path / f"smollm2-seed{seed}"
        _eval(run / "eval_base", {"base": base})
        _eval(run / "eval", {"sft": sft, "dpo": sft, "rlvr": sft})
        runs.append(run)
    assert all(real_seeds.finished(r) for r in runs)
    items, labels = real_seeds.pooled(runs)
    assert labels == ["base", "sft", "dpo", "rlvr"]
    assert len(items["gsm8k_0shot"]["base"]) == 4 and len(items["gsm8k_0shot"]["sft"]) == 8
    table = real_seeds.score_table(items, labels, runs)
    assert "25.0 (" in table and "n=4)" in table            # base: 1 of 4, once
    assert "62.5 (" in table and "[75.0 / 50.0]" in table   # sft: 5 of 8, per seed 3/4 and 2/4
    changes = real_seeds.compare_table(items, runs)
    assert "| sft − base | +37.5 (p=" in changes and "3 fixed / 0 broken" in changes
