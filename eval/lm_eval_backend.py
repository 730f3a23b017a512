"""EleutherAI lm-evaluation-harness as an optional backend for the tasks it has (MMLU, BBH, TruthfulQA,
...). A suite names them `lm_eval:<task>`. lm-eval downloads its data from the hub, so this only works
on machines with data access; its per-example results become records in the built-in format."""
from typing import Any

PREFIX = "lm_eval:"


def is_lm_eval(name: str) -> bool:
    return name.startswith(PREFIX)


def run_lm_eval(model_path: str, name: str, *, limit: int | None, shots: int | None, chat: bool,
                batch_size: int, seed: int) -> list[dict]:
    """One record per document, with `score` and the lm-eval `metric` it is, for task `lm_eval:<task>`;
    a group task's subtasks are pooled, so its score is the micro-average over documents."""
    try:
        from lm_eval import simple_evaluate
    except ImportError:
        raise RuntimeError(f"task {name} needs lm-eval: `pip install lm-eval` (or `pip install posttrain[dev]`)") from None
    from posttrain.hf import device

    task = name[len(PREFIX):]
    try:
        out = simple_evaluate(model="hf", model_args={"pretrained": model_path}, tasks=[task], limit=limit,
                              num_fewshot=shots, apply_chat_template=chat, batch_size=batch_size, device=device(), log_samples=True,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed)
    except Exception as e:  # most often the dataset could not be downloaded
        raise RuntimeError(f"lm-eval could not run '{task}' ({type(e).__name__}: {str(e)[:300]}); lm-eval tasks need "
                           "network access to their datasets, or HF_DATASETS_CACHE pointing at a copy") from e
    metric = _metric(out["results"])
    records = [_record(subtask, sample, metric) for subtask, samples in out["samples"].items() for sample in samples
               if metric in sample]
    if not records:
        raise RuntimeError(f"lm-eval returned no per-example '{metric}' for {task}")
    return records


def _metric(results: dict[str, dict[str, Any]]) -> str:
    """The task's first reported metric (`acc,none` -> `acc`), skipping stderr and aliases."""
    for values in results.values():
        for key, value in values.items():
            if "," in key and "stderr" not in key and isinstance(value, (int, float)):
                return key.split(",")[0]
    raise RuntimeError(f"lm-eval reported no numeric metric: {list(results)}")


def _record(subtask: str, sample: dict, metric: str) -> dict:
    responses = [r for resp in sample.get("filtered_resps", []) for r in (resp if isinstance(resp, list) else [resp])]
    return {"id": f"{subtask}-{sample['doc_id']}", "prompt": str(sample.get("arguments", ""))[:2000],
            "ground_truth": str(sample.get("target", "")), "completions": [str(r) for r in responses],
            "scores": [float(sample[metric])], "reasons": [], "score": float(sample[metric]), "metric": metric}
