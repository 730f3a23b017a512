"""On-policy preference pairs: sample N completions per prompt from a model, score each with the row's
verifier, and keep (best, worst). Prompts whose samples all score the same teach nothing and are
skipped and counted. Every sample and its score is kept in samples.jsonl for audit.

Resume: with `chunk_prompts` set, the prompts are sampled and scored a chunk at a time, each chunk saved
(chunks/NNNNN.jsonl) as it completes; a killed run continues after the last saved chunk and ends with what
an uninterrupted run of the same config draws (each chunk's batch seeds follow on from the previous chunk's)."""
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from posttrain import hf
from posttrain.data import DataError, read_rows, write_rows
from posttrain.formats import as_chat
from posttrain.stage import Context, Dataset, Model, Stage, register

CHUNKS = "chunks"  # the stage's progress: one file of audit records per finished chunk


@dataclass
class GenerateConfig:
    model: Model
    prompts: Dataset = field(metadata={"help": "rows with a prompt and what the verifier needs (`ground_truth`, ...)"})
    prompt_column: str = field(default="prompt", metadata={"help": "the column holding the prompt (GSM8K: question)"})
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
    chunk_prompts: int | None = field(default=None, metadata={
        "ge": 1, "help": "prompts sampled and saved per chunk, so a killed run resumes; unset: one chunk"})
    extra_pairs: Dataset | None = field(default=None, metadata={
        "help": "off-policy prompt/chosen/rejected rows (e.g. judged pairs) added after the on-policy ones, as "
                "Tülu 3 mixes them"})


def best_and_worst(scores: list[float]) -> tuple[int, int] | None:
    """Indices of the highest and lowest score (first occurrence), or None if all are equal."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    return None if scores[best] == scores[worst] else (best, worst)


def make_pairs(rows: list[dict], audit: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """The (best, worst) pair of each prompt whose samples differ, and the prompts skipped by why: all samples
    verified (score 1: nothing to reject), none verified (score 0: nothing to prefer), or tied in between."""
    pairs, skipped = [], {"all_verified": 0, "none_verified": 0, "tied_partial": 0}
    for i, (row, record) in enumerate(zip(rows, audit)):
        group, scores = record["samples"], record["scores"]
        picked = best_and_worst(scores)
        if picked is None:
            skipped["all_verified" if scores[0] >= 1 else "none_verified" if scores[0] <= 0 else "tied_partial"] += 1
            continue
        pairs.append({"id": row.get("id", i), "prompt": as_chat(row["prompt"]),
                      "chosen": [{"role": "assistant", "content": group[picked[0]]}],
                      "rejected": [{"role": "assistant", "content": group[picked[1]]}],
                      "chosen_score": scores[picked[0]], "rejected_score": scores[picked[1]]})
    return pairs, skipped


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

    def progress(self, cfg: GenerateConfig, out_dir: Path) -> str | None:
        done = len(list((out_dir / CHUNKS).glob("*.jsonl")))
        return f"{done} chunk(s) of {cfg.chunk_prompts} prompts sampled" if done else None

    def run(self, cfg: GenerateConfig, ctx: Context) -> dict:
        rows = [_with_prompt(row, cfg.prompt_column, f"{cfg.prompts}:{i + 1}")
                for i, row in enumerate(read_rows(ctx.path(cfg.prompts))[: cfg.limit])]
        size = cfg.chunk_prompts or max(len(rows), 1)
        audit, model = [], _Model(ctx.path(cfg.model), cfg.backend)
        for c, start in enumerate(range(0, len(rows), size)):
            saved = ctx.out_dir / CHUNKS / f"{c:05d}.jsonl"
            if not saved.exists() or ctx.resume == "off":
                # batch b of chunk c draws with seed + c * batches_per_chunk + b: the seeds of one uninterrupted call
                seed = cfg.seed + c * math.ceil(size / cfg.batch_size)
                write_rows(saved, _sample_and_score(cfg, model, rows[start:start + size], start, seed))
            audit += read_rows(saved)
        pairs, skipped = make_pairs(rows, audit)
        write_rows(ctx.out_dir / "samples.jsonl", audit)
        all_scores = [s for record in audit for s in record["scores"]]
        mean_score = sum(all_scores) / max(len(all_scores), 1)
        extra = read_rows(ctx.path(cfg.extra_pairs)) if cfg.extra_pairs else []
        if not pairs and not extra:
            raise DataError(f"no prompt gave a pair: all {cfg.num_samples} samples of each of the {len(rows)} prompts scored "
                            f"the same (mean score {mean_score:.3f}); raise num_samples or temperature, or start from a "
                            f"stronger model (samples: {ctx.out_dir / 'samples.jsonl'})")
        if not pairs:
            ctx.warn(f"no on-policy pair: all {cfg.num_samples} samples of each of the {len(rows)} prompts scored the same "
                     f"(mean score {mean_score:.3f}); the pairs are the {len(extra)} extra_pairs alone")
        write_rows(ctx.output("pairs"), pairs + extra)
        return {"prompts": len(rows), "samples": len(all_scores), "pairs": len(pairs), "mean_sample_score": mean_score,
                "skipped_all_equal": sum(skipped.values()), **{f"skipped_{why}": n for why, n in skipped.items()},
                **({"extra_pairs": len(extra)} if cfg.extra_pairs else {})}


def _with_prompt(row: dict, column: str, where: str) -> dict:
    if column not in row:
        raise DataError(f"{where}: no `{column}` column (prompt_column); it has: {', '.join(sorted(row)[:8])}")
    return row if column == "prompt" else {**row, "prompt": row[column]}


class _Model:
    """The sampling model, loaded once on first use (a fully resumed run never loads it); vLLM takes the path."""

    def __init__(self, path: str, backend: str):
        self.path, self.backend, self.loaded = path, backend, None

    def get(self):
        if self.backend != "hf":
            return self.path, None
        if self.loaded is None:
            from posttrain.eval.generation import load_model_and_tokenizer

            self.loaded = load_model_and_tokenizer(self.path)
        return self.loaded


def _sample_and_score(cfg: GenerateConfig, model: _Model, rows: list[dict], first: int, seed: int) -> list[dict]:
    """The audit records of a chunk of prompts (row `first` onwards): each one's samples and their scores."""
    from posttrain.eval.generation import generate
    from posttrain.rewards import score_rows

    samples = generate(*model.get(), [r["prompt"] for r in rows], max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, top_p=cfg.top_p, n=cfg.num_samples, seed=seed,
                       batch_size=cfg.batch_size, chat=cfg.chat, backend=cfg.backend)
    flat_rows = [r for r in rows for _ in range(cfg.num_samples)]
    verdicts = score_rows([s for group in samples for s in group], flat_rows, cfg.verifier, timeout_s=cfg.reward_timeout_s)
    n = cfg.num_samples
    return [{"id": row.get("id", first + i), "samples": group, "scores": [v.score for v in verdicts[i * n:(i + 1) * n]]}
            for i, (row, group) in enumerate(zip(rows, samples))]
