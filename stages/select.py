"""Data selection before SFT: GRAPE and its ablations over candidate responses, PASER, cheap baselines,
with optional MinHash dedup and n-gram decontamination applied first. The methods live in
posttrain.selection (grape, subset, paser, filters); this file is the stage's contract.

Input rows: candidate rows `{"id", "prompt", "candidates": [{"source", "response"}]}` for grape,
grape_reverse, random_response and single_source (output: SFT `messages` rows with the chosen `source`);
SFT rows (messages / alpaca / prompt+completion) for the other methods (output: the kept rows unchanged,
in input order).

Outputs:
- data: the selected rows.
- audit (audit.jsonl): one record per input row: index, id, kept, reason, filter (dedup | decontaminate |
  null), and per method: scores, rank, cluster, eval_sets / duplicate_of, sources / chosen (candidates).
- summary (summary.json), what the report reads:
    method: str; input_rows: int (rows read; prompts for candidate methods); filtered_rows: int (dropped by
    dedup/decontamination); pool_rows: int (rows the method chose from); kept_rows: int (rows written);
    dropped_rows: int (input rows with nothing kept);
    budget: {count, fraction, resolved} (null for candidate methods); reasons: {reason: rows};
    dedup: null | {threshold, num_perm, shingle, dropped};
    decontamination: null | {ngram, dropped, unchecked_tasks,
                             per_eval_set: {name: {items, short_items_unchecked, matched_rows, examples}}};
    sources (candidate methods): {source: {candidates, kept, verified}}; skills (candidate methods): {skill:
    {kept, verified}}, verify_failed: int (verified: kept responses that pass the verifier their row names,
    None where none names one; selection/quality.py);
    candidates (candidate methods): {total, kept, discarded: {reason: responses}} (counted per response);
    paser (paser): {k, k_chosen_by, graph, eigenvalues, nmf_errors (when K was chosen by them), jsd,
                    budget_split, refill, clusters: [{cluster, size, degradation, budget, selected}], ccg_rejected,
                    unallocated (budget the split gave no cluster), budget_shortfall (budget minus rows kept)}.
Launcher (`launcher: {type: torchrun, num_processes: 8}`, as training stages declare it; default: none, one
process): the model scoring of grape, grape_reverse, perplexity and ifd is split across the ranks
(posttrain.selection.ranks); rank 0 alone reads, logs and writes, and selects exactly as one process would.
Resume: model scores are appended to scores.jsonl in row order as they are computed; a killed run
continues from it (`progress` below).
"""
import dataclasses
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from posttrain.data import ReadStats, atomic_open, first_rows_problem, iter_rows, write_json
from posttrain.formats import candidates, to_example
from posttrain.selection.subset import plain_text
from posttrain.selection import filters, ranks
from posttrain.selection.filters import DecontaminateOptions
from posttrain.selection.grape import run_candidates
from posttrain.selection.options import (Budget, DedupOptions, DsirOptions, GrapeOptions, PaserOptions,
                                         QuratingOptions, ScoringOptions)
from posttrain.selection.pool import DEFAULT_RANK, Outputs, Pool
from posttrain.selection.scoring import SCORE_LOG, log_prob_scorer
from posttrain.selection.subset import run_subset
from posttrain.stage import Context, Dataset, Model, Stage, Summary, is_ref, register
from posttrain.training import Launcher, check_launcher

Method = Literal["grape", "grape_reverse", "random_response", "single_source", "paser", "random", "length",
                 "perplexity", "ifd", "dsir", "qurating"]
CANDIDATE_METHODS = ("grape", "grape_reverse", "random_response", "single_source")
MODEL_METHODS = ("grape", "grape_reverse", "perplexity", "ifd", "paser")
LOG_PROB_METHODS = ("grape", "grape_reverse", "perplexity", "ifd")  # the methods scoring.backend vllm can score


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
    launcher: Launcher = field(default_factory=Launcher, metadata={
        "help": "split the model scoring of grape, grape_reverse, perplexity and ifd across processes/machines"})


@register
class Select(Stage):
    kind = "select"
    Config = SelectConfig
    outputs = {"data": Dataset, "audit": Dataset, "summary": Summary}
    description = "data selection (GRAPE, PASER, baselines) with dedup and decontamination"

    def check(self, cfg: SelectConfig) -> list[tuple[str, str]]:
        m, problems = cfg.method, []
        if cfg.budget.count is not None and cfg.budget.fraction is not None:
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
            problems += _paser_problems(cfg.paser)
            sizes = (_vocab_size(cfg.model), _vocab_size(cfg.paser.reference_model))
            if None not in sizes and sizes[0] != sizes[1]:
                problems.append(("paser.reference_model", f"vocabulary size {sizes[1]} differs from model's {sizes[0]}: "
                                 "the JSD needs both models to share one vocabulary"))
        # the row format the method reads: candidate rows, SFT rows (model scoring, length), text (dsir), or any
        # object (random, qurating: its score_key is checked as it is read)
        convert = candidates if m in CANDIDATE_METHODS else to_example if m in (*MODEL_METHODS, "length") else \
            plain_text if m == "dsir" else (lambda row, where: row)
        if cfg.on_bad_rows == "error" and (bad := first_rows_problem(cfg.data, convert)):
            problems.append(("data", bad))
        return problems + _launcher_problems(cfg) + (filters.check_tasks(cfg.decontaminate) if cfg.decontaminate else [])

    def files(self, cfg: SelectConfig) -> list[Path]:
        return filters.files(cfg.decontaminate) if cfg.decontaminate else []

    def progress(self, cfg: SelectConfig, out_dir: Path) -> str | None:
        log = out_dir / SCORE_LOG
        rows = sum(1 for line in open(log, "rb") if line.endswith(b"\n")) if log.exists() else 0
        return f"{rows} rows scored" if rows else None

    def run(self, cfg: SelectConfig, ctx: Context) -> dict:
        if ranks.is_follower():  # a launched rank other than 0: it scores the shares rank 0 sends, nothing else
            ranks.follow(log_prob_scorer(cfg, ctx)[1])
            return {}
        path = ctx.path(cfg.data)
        bad = ReadStats()  # one counting pass: the methods below stream the file again, skipping the same rows
        for _ in iter_rows(path, cfg.on_bad_rows, bad):
            pass
        hits, filter_summary = filters.apply(path, cfg.on_bad_rows, cfg.dedup, _resolved(cfg.decontaminate, ctx))
        with atomic_open(ctx.output("audit")) as audit, atomic_open(ctx.output("data")) as data:
            out = Outputs(audit, data)
            if cfg.method in CANDIDATE_METHODS:
                summary = run_candidates(cfg, ctx, path, hits, out)
            else:
                summary = run_subset(cfg, ctx, Pool(path, cfg.on_bad_rows, hits), bad.rows - len(hits), out)
        summary = {"method": cfg.method, "input_rows": out.input_rows, "filtered_rows": len(hits),
                   "pool_rows": out.input_rows - len(hits), "kept_rows": out.kept_rows, **summary,
                   "dropped_rows": out.dropped_rows, "reasons": dict(out.reasons),
                   "skipped_bad_rows": bad.skipped, **filter_summary}
        write_json(ctx.output("summary"), summary)
        ctx.info(f"{cfg.method}: kept {summary['kept_rows']} rows from {summary['input_rows']}")
        per_rank = ranks.release()  # after success only: on an error rank 0 exits and the launcher stops the others
        return {"rows/input": summary["input_rows"], "rows/kept": summary["kept_rows"],
                "rows/filtered": summary["filtered_rows"], "skipped_rows": bad.skipped,
                **({"scored_per_rank": per_rank} if per_rank else {})}


def _paser_problems(p: PaserOptions) -> list[tuple[str, str]]:
    problems = []
    if p.k_rule == "fixed" and p.clusters is None:
        problems.append(("paser.clusters", "k_rule fixed needs paser.clusters (the released code uses 10)"))
    if p.k_rule != "fixed" and p.clusters is not None:
        problems.append(("paser.clusters", f"not used by k_rule {p.k_rule}: remove it, or set k_rule: fixed"))
    if p.k_rule == "fixed" and p.max_clusters is not None:
        problems.append(("paser.max_clusters", "not used by k_rule fixed (K is paser.clusters): remove it"))
    if not p.ccg and p.concepts_per_sample is not None:
        problems.append(("paser.concepts_per_sample", "not used without the CCG (ccg: false): remove it"))
    if p.graph != "auto" and p.dense_max_rows is not None:
        problems.append(("paser.dense_max_rows", f"only used by graph auto, not {p.graph}: remove it"))
    problems += [(f"paser.{key}", "not used by graph dense: remove it")
                 for key in ("landmarks", "neighbors") if p.graph == "dense" and getattr(p, key) is not None]
    return problems


def _launcher_problems(cfg: SelectConfig) -> list[tuple[str, str]]:
    if cfg.launcher.type == "none":
        return check_launcher(cfg.launcher)
    if cfg.launcher.deepspeed:
        return [("launcher.deepspeed", "the select stage trains nothing: remove deepspeed")]
    if cfg.method not in LOG_PROB_METHODS or cfg.scoring.backend != "hf":
        return [("launcher.type", f"only the transformers scoring of {', '.join(LOG_PROB_METHODS)} is split across "
                                  f"processes (method {cfg.method}, scoring.backend {cfg.scoring.backend}): set launcher.type: none")]
    return []


def _resolved(opts: DecontaminateOptions | None, ctx: Context) -> DecontaminateOptions | None:
    """The options with eval-set sources that are stage references replaced by the files they name."""
    if opts is None:
        return None
    tasks = [dataclasses.replace(t, source=ctx.path(t.source)) if getattr(t, "source", None) else t for t in opts.tasks]
    return dataclasses.replace(opts, tasks=tasks)


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
