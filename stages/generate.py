"""On-policy preference pairs: sample N completions per prompt from a model, score each with the row's
verifier, and keep (best, worst). Prompts whose samples all score the same teach nothing and are
skipped and counted. Every sample and its score is kept in samples.jsonl for audit."""
from dataclasses import dataclass, field
from typing import Literal

from posttrain import hf
from posttrain.data import DataError, as_chat, read_rows, write_rows
from posttrain.stage import Context, Dataset, Model, Stage, register


@dataclass
class GenerateConfig:
    model: Model
    prompts: Dataset = field(metadata={"help": "rows with `prompt` and what the verifier needs (`ground_truth`, ...)"})
    limit: int | None = field(default=None, metadata={"ge": 1, "help": "use only the first N prompts"})
    num_samples: int = field(default=4, metadata={"ge": 2})
    temperature: float = field(default=0.7, metadata={"gt": 0})
    top_p: float = field(default=1.0, metadata={"gt": 0, "le": 1})
    max_new_tokens: int = field(default=256, metadata={"ge": 1})
    verifier: str | None = field(default=None, metadata={"help": "default: each row's `verifier` column"})
    chat: bool = True
    backend: Literal["hf", "vllm"] = "hf"
    batch_size: int = field(default=32, metadata={"ge": 1})
    seed: int = 0
    reward_timeout_s: float = field(default=5.0, metadata={"gt": 0})


def best_and_worst(scores: list[float]) -> tuple[int, int] | None:
    """Indices of the highest and lowest score (first occurrence), or None if all are equal."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    return None if scores[best] == scores[worst] else (best, worst)


@register
class Generate(Stage):
    kind = "generate"
    Config = GenerateConfig
    outputs = {"pairs": Dataset}
    description = "sample, verify, and emit on-policy (best, worst) preference pairs"

    def check(self, cfg: GenerateConfig) -> list[tuple[str, str]]:
        from posttrain.rewards import list_verifiers

        problems = hf.vllm_problem("backend", "backend vllm") if cfg.backend == "vllm" else []
        if cfg.verifier is not None and cfg.verifier not in list_verifiers():
            from posttrain.schema import suggest

            problems.append(("verifier", f"unknown verifier '{cfg.verifier}'{suggest(cfg.verifier, list_verifiers())}; "
                                         f"known: {', '.join(list_verifiers())}"))
        return problems

    def run(self, cfg: GenerateConfig, ctx: Context) -> dict:
        from posttrain.eval.generation import generate
        from posttrain.rewards import score_rows

        rows = read_rows(ctx.path(cfg.prompts))[: cfg.limit]
        samples = generate(ctx.path(cfg.model), None, [r["prompt"] for r in rows], max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_p=cfg.top_p, n=cfg.num_samples, seed=cfg.seed,
                           batch_size=cfg.batch_size, chat=cfg.chat, backend=cfg.backend)
        flat_rows = [r for r in rows for _ in range(cfg.num_samples)]
        verdicts = score_rows([s for group in samples for s in group], flat_rows, cfg.verifier, timeout_s=cfg.reward_timeout_s)
        pairs, audit, tied = [], [], 0
        for i, (row, group) in enumerate(zip(rows, samples)):
            scores = [v.score for v in verdicts[i * cfg.num_samples:(i + 1) * cfg.num_samples]]
            audit.append({"id": row.get("id", i), "samples": group, "scores": scores})
            picked = best_and_worst(scores)
            if picked is None:
                tied += 1
                continue
            pairs.append({"id": row.get("id", i), "prompt": as_chat(row["prompt"]),
                          "chosen": [{"role": "assistant", "content": group[picked[0]]}],
                          "rejected": [{"role": "assistant", "content": group[picked[1]]}],
                          "chosen_score": scores[picked[0]], "rejected_score": scores[picked[1]]})
        write_rows(ctx.out_dir / "samples.jsonl", audit)
        mean_score = sum(v.score for v in verdicts) / max(len(verdicts), 1)
        if not pairs:
            raise DataError(f"no prompt gave a pair: all {cfg.num_samples} samples of each of the {len(rows)} prompts scored "
                            f"the same (mean score {mean_score:.3f}); raise num_samples or temperature, or start from a "
                            f"stronger model (samples: {ctx.out_dir / 'samples.jsonl'})")
        write_rows(ctx.output("pairs"), pairs)
        return {"prompts": len(rows), "pairs": len(pairs), "skipped_all_equal": tied, "mean_sample_score": mean_score}
