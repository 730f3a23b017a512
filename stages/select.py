"""Data selection before SFT: GRAPE and its ablations over candidate responses, PASER, cheap baselines,
with optional MinHash dedup and n-gram decontamination applied first.

Input rows: candidate rows `{"id", "prompt", "candidates": [{"source", "response"}]}` for grape,
grape_reverse, random_response and single_source (output: SFT `messages` rows with the chosen `source`);
SFT rows (messages / alpaca / prompt+completion) for the other methods (output: the kept rows unchanged,
in input order).

Memory: the candidate methods stream end to end: rows are read, scored `scoring.chunk_rows` at a time,
decided and written as they go, so memory does not grow with the number of prompts. The other methods
rank globally: they stream the file once per quantity they need (and once more to write) and hold one
decision per row, plus for PASER the instructions while they are embedded and each row's concepts.
Dedup's LSH index holds an entry per kept row, and the filters hold the audit fields of the rows they drop.

Files written into the stage folder besides the `data` output:
- selection.jsonl: one record per input row: index, id, kept, reason, filter (dedup | decontaminate |
  null), and per method: scores, rank, cluster, eval_sets / duplicate_of, sources / chosen (candidates).
  Written alongside the data output; both appear only once complete.
- scores.jsonl: model scores appended in row order as they are computed; a killed run resumes from it.
- selection_summary.json, for the report:
    method: str; input_rows: int (rows read; prompts for candidate methods); filtered_rows: int (dropped by
    dedup/decontamination); pool_rows: int (rows the method chose from); kept_rows: int (rows written);
    dropped_rows: int (input rows with nothing kept);
    budget: {count, fraction, resolved} (null for candidate methods); reasons: {reason: rows};
    dedup: null | {threshold, num_perm, shingle, dropped};
    decontamination: null | {ngram, dropped, per_eval_set: {name: {items, short_items_unchecked, matched_rows}}};
    sources (candidate methods): {source: {candidates, kept}};
    paser (paser): {k, k_chosen_by, eigenvalues, clusters: [{cluster, size, degradation, budget, selected}],
                    ccg_rejected, budget_shortfall}.
"""
import importlib.util
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import numpy as np

from posttrain.data import DataError, ReadStats, atomic_open, iter_rows, located_rows, write_json
from posttrain.formats import Example, candidate_examples, candidates, locate, row_text, sft_row, to_example
from posttrain.selection import baselines, grape, paser
from posttrain.selection.budget import gumbel_top_k, resolve
from posttrain.selection.ccg import key_phrases
from posttrain.selection.filters import BUILTIN_EVAL_SETS, Contamination, NearDuplicates
from posttrain.selection.scoring import (PAPER_TEMPLATE, Encoded, Formatter, ScoreLog, mean_jsd, mean_log_probs,
                                         score_stream, vllm_log_prob_scorer)
from posttrain.stage import Context, Dataset, Model, Stage, is_ref, register

Method = Literal["grape", "grape_reverse", "random_response", "single_source", "paser", "random", "length",
                 "perplexity", "ifd", "dsir", "qurating"]
EvalSetName = Literal["gsm8k", "math500", "ifeval", "humaneval", "mbpp"]
CANDIDATE_METHODS = ("grape", "grape_reverse", "random_response", "single_source")
MODEL_METHODS = ("grape", "grape_reverse", "perplexity", "ifd", "paser")
LOG_PROB_METHODS = ("grape", "grape_reverse", "perplexity", "ifd")  # the methods scoring.backend vllm can score
DEFAULT_RANK = {"length": "highest", "perplexity": "lowest", "ifd": "highest"}
DEDUP_BATCH = 1024


@dataclass
class Budget:
    count: int | None = field(default=None, metadata={"ge": 1, "help": "keep this many rows"})
    fraction: float | None = field(default=None, metadata={"gt": 0, "le": 1, "help": "keep this fraction of the rows"})


@dataclass
class ScoringOptions:
    prompt_format: Literal["plain", "chat"] = field(default="plain", metadata={"help": "plain: `template`; chat: the tokenizer's chat template"})
    template: str = field(default=PAPER_TEMPLATE, metadata={"help": "plain format; must contain {instruction} and end with {response}"})
    max_length: int = field(default=1024, metadata={"ge": 8, "help": "longer texts lose tokens from the left"})
    batch_size: int = field(default=8, metadata={"ge": 1})
    chunk_rows: int = field(default=512, metadata={"ge": 1, "help": "rows scored between checkpoints"})
    backend: Literal["hf", "vllm"] = field(default="hf", metadata={
        "help": "mean response log-probs (grape, grape_reverse, perplexity, ifd) with transformers, or vLLM's "
                "prompt logprobs on GPU (vLLM batches itself: batch_size is not used)"})


@dataclass
class GrapeOptions:
    top_k: int = field(default=1, metadata={"ge": 1, "help": "responses kept per prompt"})
    source: str | None = field(default=None, metadata={"help": "single_source: the source to keep"})


@dataclass
class PaserOptions:
    reference_model: Model | None = field(default=None, metadata={"help": "the model to recover towards (e.g. the unpruned one); `model` is the target"})
    clusters: int | None = field(default=None, metadata={"ge": 1, "help": "K; unset: chosen by the eigengap"})
    max_clusters: int = field(default=30, metadata={"ge": 2})
    landmarks: int = field(default=1000, metadata={"ge": 2, "help": "anchor points of the kNN graph"})
    neighbors: int = field(default=5, metadata={"ge": 1, "help": "landmarks each point links to"})
    embedding_model: str | None = field(default=None, metadata={"help": "sentence-transformers folder; unset: bundled all-MiniLM-L6-v2"})
    ccg: bool = field(default=True, metadata={"help": "apply the Concept Consistency Graph filter"})
    concepts_per_sample: int = field(default=5, metadata={"ge": 1})


@dataclass
class DsirOptions:
    target: Dataset | None = field(default=None, metadata={"help": "rows that look like the wanted data"})
    buckets: int = field(default=10000, metadata={"ge": 16})


@dataclass
class QuratingOptions:
    score_key: str | None = field(default=None, metadata={"help": "the numeric column to sample by"})
    temperature: float = field(default=1.0, metadata={"gt": 0})


@dataclass
class DedupOptions:
    threshold: float = field(default=0.7, metadata={"gt": 0, "le": 1, "help": "estimated Jaccard similarity"})
    num_perm: int = field(default=128, metadata={"ge": 16})
    shingle: int = field(default=5, metadata={"ge": 1, "help": "words per shingle"})


@dataclass
class EvalFile:
    name: str
    path: Dataset
    fields: list[str] = field(default_factory=list, metadata={"help": "text fields; empty: question/problem/prompt/instruction/text"})


@dataclass
class DecontaminateOptions:
    ngram: int = field(default=13, metadata={"ge": 1})
    builtin: list[EvalSetName] = field(default_factory=lambda: list(BUILTIN_EVAL_SETS),
                                       metadata={"help": "eval sets from ../shared/data", "may_be_empty": True})
    extra: list[EvalFile] = field(default_factory=list)


@dataclass
class SelectConfig:
    data: Dataset
    method: Method
    model: Model | None = field(default=None, metadata={"help": "the scoring model (GRAPE: the base model to fine-tune)"})
    budget: Budget = field(default_factory=Budget)
    rank: Literal["highest", "lowest"] | None = field(default=None, metadata={"help": "length/perplexity/ifd: which end to keep"})
    seed: int = 0
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    grape: GrapeOptions = field(default_factory=GrapeOptions)
    paser: PaserOptions = field(default_factory=PaserOptions)
    dsir: DsirOptions = field(default_factory=DsirOptions)
    qurating: QuratingOptions = field(default_factory=QuratingOptions)
    dedup: DedupOptions | None = None
    decontaminate: DecontaminateOptions | None = None
    on_bad_rows: Literal["error", "skip"] = "error"


def _vocab_size(model: str | None) -> int | None:
    """The vocabulary size from a local model folder's config, when it can be known before running."""
    config = Path(model or "") / "config.json"
    if not model or is_ref(model) or not config.exists():
        return None
    data = json.loads(config.read_text())
    return data.get("vocab_size") or data.get("text_config", {}).get("vocab_size")


def _vllm_problems(method: str) -> list[tuple[str, str]]:
    if method not in LOG_PROB_METHODS:
        return [("scoring.backend", f"vllm scores response log-probs ({', '.join(LOG_PROB_METHODS)}), which method "
                                    f"{method} does not use: set scoring.backend: hf")]
    if importlib.util.find_spec("vllm") is None:
        return [("scoring.backend", "vllm needs vLLM, which is not installed here: pip install 'posttrain[vllm]' "
                                    "on a GPU machine, or set scoring.backend: hf")]
    return []


class Outputs:
    """selection.jsonl and the data output, written row by row as rows are decided, with the counts the
    summary needs; nothing else about the rows is kept."""

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


@register
class Select(Stage):
    kind = "select"
    Config = SelectConfig
    outputs = {"data": Dataset}
    description = "data selection (GRAPE, PASER, baselines) with dedup and decontamination"

    def check(self, cfg: SelectConfig) -> list[tuple[str, str]]:
        m, problems = cfg.method, []
        both = cfg.budget.count is not None and cfg.budget.fraction is not None
        if both:
            problems.append(("budget", "set budget.count or budget.fraction, not both"))
        if m in CANDIDATE_METHODS and (cfg.budget.count is not None or cfg.budget.fraction is not None):
            problems.append(("budget", f"{m} keeps the chosen response(s) of every prompt and takes no budget"))
        if m not in CANDIDATE_METHODS and cfg.budget.count is None and cfg.budget.fraction is None:
            problems.append(("budget", f"{m} needs budget.count or budget.fraction"))
        if m in MODEL_METHODS and cfg.model is None:
            problems.append(("model", f"{m} scores with a model: set model"))
        unused = {"model": m not in MODEL_METHODS and cfg.model is not None,
                  "rank": m not in DEFAULT_RANK and cfg.rank is not None,
                  "paser.reference_model": m != "paser" and cfg.paser.reference_model is not None,
                  "dsir.target": m != "dsir" and cfg.dsir.target is not None,
                  "qurating.score_key": m != "qurating" and cfg.qurating.score_key is not None,
                  "grape.source": m != "single_source" and cfg.grape.source is not None}
        problems += [(key, f"not used by method {m}: remove it") for key, hit in unused.items() if hit]
        required = {"paser": ("paser.reference_model", cfg.paser.reference_model),
                    "single_source": ("grape.source", cfg.grape.source),
                    "dsir": ("dsir.target", cfg.dsir.target), "qurating": ("qurating.score_key", cfg.qurating.score_key)}
        if m in required and required[m][1] is None:
            problems.append((required[m][0], f"method {m} needs {required[m][0]}"))
        if m == "single_source" and cfg.grape.top_k != 1:
            problems.append(("grape.top_k", "single_source keeps one response per prompt"))
        if m in MODEL_METHODS and cfg.scoring.prompt_format == "plain" and not (
                "{instruction}" in cfg.scoring.template and cfg.scoring.template.endswith("{response}")):
            problems.append(("scoring.template", "must contain {instruction} and end with {response}"))
        if cfg.scoring.backend == "vllm":
            problems += _vllm_problems(m)
        if m == "paser":
            sizes = (_vocab_size(cfg.model), _vocab_size(cfg.paser.reference_model))
            if None not in sizes and sizes[0] != sizes[1]:
                problems.append(("paser.reference_model", f"vocabulary size {sizes[1]} differs from model's {sizes[0]}: "
                                 "the JSD needs both models to share one vocabulary"))
        return problems

    def run(self, cfg: SelectConfig, ctx: Context) -> dict:
        path = ctx.path(cfg.data)
        bad = ReadStats()  # one counting pass: the methods below stream the file again, skipping the same rows
        for _ in iter_rows(path, cfg.on_bad_rows, bad):
            pass
        hits, filter_summary = _filter(cfg, path)
        with atomic_open(ctx.out_dir / "selection.jsonl") as audit, atomic_open(ctx.output("data")) as data:
            out = Outputs(audit, data)
            if cfg.method in CANDIDATE_METHODS:
                summary = _run_candidates(cfg, ctx, path, hits, out)
            else:
                summary = _run_subset(cfg, ctx, Pool(path, cfg.on_bad_rows, hits), bad.rows - len(hits), out)
        summary = {"method": cfg.method, "input_rows": out.input_rows, "filtered_rows": len(hits),
                   "pool_rows": out.input_rows - len(hits), "kept_rows": out.kept_rows, **summary,
                   "dropped_rows": out.dropped_rows, "reasons": dict(out.reasons),
                   "skipped_bad_rows": bad.skipped, **filter_summary}
        write_json(ctx.out_dir / "selection_summary.json", summary)
        ctx.info(f"{cfg.method}: kept {summary['kept_rows']} rows from {summary['input_rows']}")
        return {"rows/input": summary["input_rows"], "rows/kept": summary["kept_rows"],
                "rows/filtered": summary["filtered_rows"], "skipped_rows": bad.skipped}


# ---------- dedup and decontamination ----------

def _filter(cfg: SelectConfig, path: str) -> tuple[dict[int, dict], dict]:
    """Audit fields of the rows dropped before selection (index -> fields), and the filters' summary."""
    summary = {"dedup": None, "decontamination": None}
    if cfg.dedup is None and cfg.decontaminate is None:
        return {}, summary
    contamination = _contamination(cfg.decontaminate) if cfg.decontaminate else None
    dedup = NearDuplicates(cfg.dedup.threshold, cfg.dedup.num_perm, cfg.dedup.shingle) if cfg.dedup else None
    hits: dict[int, dict] = {}
    pending: list[tuple[int, str]] = []

    def flush():
        for (index, _), dup_of in zip(pending, dedup.check([str(i) for i, _ in pending], [t for _, t in pending])):
            if dup_of is not None:
                hits[index] = {"filter": "dedup", "reason": "near-duplicate", "duplicate_of": int(dup_of)}
        pending.clear()

    for index, (where, row) in enumerate(located_rows(path, cfg.on_bad_rows)):
        text = row_text(row, locate(where, row))
        sets = contamination.matches(text) if contamination else []
        if sets:
            hits[index] = {"filter": "decontaminate", "reason": "contaminated", "eval_sets": sets}
        elif dedup:
            pending.append((index, text))
            if len(pending) == DEDUP_BATCH:
                flush()
    if dedup:
        flush()
        summary["dedup"] = {"threshold": cfg.dedup.threshold, "num_perm": cfg.dedup.num_perm,
                            "shingle": cfg.dedup.shingle, "dropped": sum(h["filter"] == "dedup" for h in hits.values())}
    if contamination:
        summary["decontamination"] = {"ngram": contamination.n, "per_eval_set": contamination.stats,
                                      "dropped": sum(h["filter"] == "decontaminate" for h in hits.values())}
    return hits, summary


def _contamination(opts: DecontaminateOptions) -> Contamination:
    index = Contamination(opts.ngram)
    for name in opts.builtin:
        index.add_builtin(name)
    for extra in opts.extra:
        index.add_file(extra.name, extra.path, extra.fields)
    return index


# ---------- models ----------

def _load(path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return tokenizer, model


def _pad_id(tokenizer) -> int:
    return next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)


def _formatter(cfg: SelectConfig, tokenizer) -> Formatter:
    s = cfg.scoring
    return Formatter(tokenizer, s.prompt_format, s.template, s.max_length)


def _log_prob_scorer(cfg: SelectConfig, ctx: Context) -> tuple[Formatter, Callable[[list[Encoded]], list[float]]]:
    """The formatter and the mean response log-prob scorer of `model` on scoring.backend."""
    path = ctx.path(cfg.model)
    if cfg.scoring.backend == "vllm":
        from transformers import AutoTokenizer

        return _formatter(cfg, AutoTokenizer.from_pretrained(path)), vllm_log_prob_scorer(path)
    tokenizer, model = _load(path)
    pad = _pad_id(tokenizer)
    return _formatter(cfg, tokenizer), lambda encoded: mean_log_probs(model, encoded, cfg.scoring.batch_size, pad)


def _score_log(ctx: Context) -> ScoreLog:
    return ScoreLog(ctx.out_dir / "scores.jsonl", fresh=ctx.resume == "off")


def _progress(ctx: Context):
    return lambda done: ctx.info(f"scored {done} rows")


# ---------- candidate methods (GRAPE family), streamed ----------

def _run_candidates(cfg: SelectConfig, ctx: Context, path: str, hits: dict[int, dict], out: Outputs) -> dict:
    """Streamed: scores are computed a chunk ahead of the row being decided; each row is written once decided."""
    def rows() -> Iterator[tuple[int, dict, str]]:
        for index, (where, row) in enumerate(located_rows(path, cfg.on_bad_rows)):
            yield index, row, locate(where, row)

    scored = _candidate_scores(cfg, ctx, (r for r in rows() if r[0] not in hits))
    offered, kept = Counter(), Counter()
    for i, row, where in rows():
        cands = candidates(row, where)
        sources = [c["source"] for c in cands]
        offered.update(sources)
        record = {"index": i, "id": row.get("id"), "sources": sources, "filter": None}
        if i in hits:
            out.record({**record, "kept": False, **hits[i]})
            continue
        scores = next(scored)["scores"] if scored else None
        chosen = grape.choose(cfg.method, scores, sources, cfg.grape.top_k, cfg.grape.source, cfg.seed, i)
        reason = "selected" if chosen else f"no candidate from source {cfg.grape.source}"
        out.record({**record, "kept": bool(chosen), "reason": reason, "scores": scores, "chosen": chosen})
        row_id = str(row.get("id", i))
        for r, j in enumerate(chosen):
            kept[sources[j]] += 1
            out.keep(sft_row(row, cands[j], row_id if cfg.grape.top_k == 1 else f"{row_id}-{r}"))
    return {"budget": None, "sources": {s: {"candidates": offered[s], "kept": kept[s]} for s in sorted(offered)}}


def _candidate_scores(cfg: SelectConfig, ctx: Context, pool: Iterable[tuple[int, dict, str]]) -> Iterator[dict] | None:
    """The score rows of the pool's prompts in order, computed lazily; None for methods that score nothing."""
    if cfg.method not in ("grape", "grape_reverse"):
        return None
    fmt, score = _log_prob_scorer(cfg, ctx)
    items = ((i, str(row.get("id", i)), where, candidate_examples(row, where)) for i, row, where in pool)
    return score_stream(items, lambda exs, where: [fmt.encode(e, where) for e in exs], score,
                        _score_log(ctx), cfg.scoring.chunk_rows, _progress(ctx))


# ---------- subset methods ----------

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


def _run_subset(cfg: SelectConfig, ctx: Context, pool: Pool, size: int, out: Outputs) -> dict:
    """Global ranking over the pool's `size` rows: the method streams the pool and returns one decision per
    pool row (all that is held); a last pass writes each row's audit record and the kept rows."""
    budget = resolve(cfg.budget.count, cfg.budget.fraction, size)
    decisions, extra = SUBSET_METHODS[cfg.method](cfg, ctx, pool, size, budget) if size else ([], {})
    pending = iter(decisions)
    for i, row in enumerate(iter_rows(pool.path, pool.on_bad_rows)):
        base = {"index": i, "id": row.get("id")}
        if i in pool.hits:
            out.record({**base, "kept": False, **pool.hits[i]})
            continue
        d = next(pending)
        out.record({**base, "kept": d.kept, "reason": d.reason, "filter": None, **d.fields})
        if d.kept:
            out.keep(row)
    return {"budget": {"count": cfg.budget.count, "fraction": cfg.budget.fraction, "resolved": budget}, **extra}


def _by_rank(order, k: int, fields: list[dict], not_chosen: str) -> list[Decision]:
    """Decisions from a ranked or drawn order over the pool: its first k are kept."""
    decisions = [Decision(False, not_chosen, f) for f in fields]
    for rank, p in enumerate(order):
        decisions[p].fields["rank"] = rank
        if rank < k:
            decisions[p].kept, decisions[p].reason = True, "selected"
    return decisions


def _random(cfg, ctx, pool: Pool, n: int, k: int):
    order = np.random.default_rng(cfg.seed).permutation(n)[:k]
    return _by_rank(order, k, [{} for _ in range(n)], "not drawn"), {}


def _ranked(cfg: SelectConfig, scores, k: int, eligible=None) -> list[Decision]:
    """Keep the k best by `scores` (name -> array); the first name is the ranking score."""
    names = list(scores)
    fields = [{"scores": {n: float(scores[n][p]) for n in names}} for p in range(len(scores[names[0]]))]
    highest = (cfg.rank or DEFAULT_RANK[cfg.method]) == "highest"
    order = [p for p in baselines.ranked(scores[names[0]], highest) if eligible is None or eligible[p]]
    return _by_rank(order, k, fields, "below budget")


def _length(cfg, ctx, pool: Pool, n: int, k: int):
    return _ranked(cfg, {"response_chars": np.array([len(e.response) for _, e in pool.examples()])}, k), {}


def _model_scores(cfg: SelectConfig, ctx: Context, pool: Pool, with_response_only: bool):
    """Mean response log-probs per example under `model` (and, for IFD, of the response alone)."""
    fmt, score = _log_prob_scorer(cfg, ctx)

    def encode(exs, where):
        return [fmt.encode(exs[0], where)] + ([fmt.encode_response_only(exs[0], where)] if with_response_only else [])
    items = ((p, str(p), where, [ex]) for p, (where, ex) in enumerate(pool.examples()))
    scored = score_stream(items, encode, score, _score_log(ctx), cfg.scoring.chunk_rows, _progress(ctx))
    return np.array([r["scores"] for r in scored])


def _perplexity(cfg, ctx, pool: Pool, n: int, k: int):
    logp = _model_scores(cfg, ctx, pool, False)[:, 0]
    return _ranked(cfg, {"perplexity": np.exp(-logp), "mean_logprob": logp}, k), {}


def _ifd(cfg, ctx, pool: Pool, n: int, k: int):
    logp = _model_scores(cfg, ctx, pool, True)
    score = baselines.ifd(logp[:, 0], logp[:, 1])
    decisions = _ranked(cfg, {"ifd": score, "logprob_given_question": logp[:, 0], "logprob_alone": logp[:, 1]},
                        k, eligible=score <= 1)
    for d, s in zip(decisions, score):
        if s > 1:
            d.reason = "ifd > 1"
    return decisions, {}


def _plain_text(row: dict, where: str) -> str:
    return row["text"] if isinstance(row.get("text"), str) else row_text(row, where)


def _dsir(cfg, ctx, pool: Pool, n: int, k: int):
    target_path = ctx.path(cfg.dsir.target)
    target = (_plain_text(r, locate(where, r)) for where, r in located_rows(target_path))
    weights = baselines.dsir_log_weights((_plain_text(r, w) for w, r in pool.rows()), target, cfg.dsir.buckets)
    order = gumbel_top_k(weights, k, np.random.default_rng(cfg.seed))
    return _by_rank(order, k, [{"scores": {"dsir_log_weight": float(w)}} for w in weights], "not drawn"), {}


def _qurating(cfg, ctx, pool: Pool, n: int, k: int):
    key = cfg.qurating.score_key
    scores = np.empty(n)
    for p, (where, row) in enumerate(pool.rows()):
        if not isinstance(row.get(key), (int, float)) or isinstance(row.get(key), bool):
            raise DataError(f"{where}: qurating.score_key '{key}' must be a number in every row")
        scores[p] = row[key]
    order = gumbel_top_k(scores / cfg.qurating.temperature, k, np.random.default_rng(cfg.seed))
    return _by_rank(order, k, [{"scores": {key: float(s)}} for s in scores], "not drawn"), {}


def _paser(cfg, ctx, pool: Pool, n: int, k: int):
    opts = cfg.paser
    tokenizer, model = _load(ctx.path(cfg.model))
    _, reference = _load(ctx.path(opts.reference_model))
    if reference.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"paser.reference_model has vocabulary size {reference.config.vocab_size}, model has "
                         f"{model.config.vocab_size}: the JSD needs one shared vocabulary")
    fmt, pad = _formatter(cfg, tokenizer), _pad_id(tokenizer)
    items = ((p, str(p), where, [ex]) for p, (where, ex) in enumerate(pool.examples()))
    scored = [(r["scores"][0], r["tokens"][0]) for r in score_stream(
        items, lambda exs, where: [fmt.encode(exs[0], where)],
        lambda enc: mean_jsd(reference, model, enc, cfg.scoring.batch_size, pad),
        _score_log(ctx), cfg.scoring.chunk_rows, _progress(ctx))]
    jsd, tokens = np.array([s for s, _ in scored]), np.array([t for _, t in scored])
    instructions, concepts = [], []
    for _, e in pool.examples():  # the texts are not kept, only the instructions (to embed) and the concepts
        instructions.append(e.instruction)
        if opts.ccg:
            concepts.append(key_phrases(f"{e.instruction}\n{e.response}", opts.concepts_per_sample))
    ctx.info(f"embedding {n} instructions")
    clustering = paser.spectral_clusters(paser.embed(instructions, opts.embedding_model),
                                         opts.clusters, opts.max_clusters, opts.landmarks, opts.neighbors, cfg.seed)
    del instructions
    concepts = concepts or None
    decisions, table = paser.select(clustering.labels, jsd, tokens, concepts, k)
    out = [Decision(d.kept, d.reason, {"scores": {"jsd": float(jsd[p]), "tokens": int(tokens[p]), "efficiency": d.efficiency},
                                       "cluster": int(clustering.labels[p]), "rank": d.rank,
                                       **({"concepts": concepts[p]} if concepts else {}),
                                       **({"conflict": d.conflict} if d.conflict else {})})
           for p, d in enumerate(decisions)]
    kept = sum(d.kept for d in decisions)
    summary = {"k": clustering.k, "k_chosen_by": clustering.k_chosen_by, "eigenvalues": clustering.eigenvalues,
               "clusters": table, "ccg_rejected": sum(d.reason == "ccg conflict" for d in decisions),
               "budget_shortfall": k - kept}
    return out, {"paser": summary}


SUBSET_METHODS = {"random": _random, "length": _length, "perplexity": _perplexity, "ifd": _ifd, "dsir": _dsir,
                  "qurating": _qurating, "paser": _paser}
