"""The select stage's option blocks (recipe keys under stages.NAME.budget, .scoring, .grape, ...)."""
from dataclasses import dataclass, field
from typing import Literal

from posttrain.selection.scoring import PAPER_TEMPLATE
from posttrain.stage import Dataset, Model


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
    """PASER's options; the defaults are the paper's method (selection/paser.py says which options are not)."""
    reference_model: Model | None = field(default=None, metadata={"help": "the model to recover towards (e.g. the unpruned one); `model` is the target"})
    k_rule: Literal["nmf_error", "fixed", "eigengap"] = field(default="nmf_error", metadata={
        "help": "how K is chosen: nmf_error (the paper), fixed (the released code: `clusters`, which it sets to 10), "
                "eigengap (posttrain's earlier variant, not the paper's)"})
    clusters: int | None = field(default=None, metadata={"ge": 1, "help": "K, with k_rule: fixed (only then)"})
    max_clusters: int | None = field(default=None, metadata={"ge": 2, "help": "nmf_error, eigengap: K is searched in [2, max_clusters]; unset: 30"})
    graph: Literal["auto", "dense", "landmark"] = field(default="auto", metadata={
        "help": "dense: diffusion kernel + NMF spectral clustering (the paper; O(N^2) memory); landmark: anchor kNN "
                "graph + k-means (an approximation, not the paper's); auto: dense up to dense_max_rows rows"})
    dense_max_rows: int | None = field(default=None, metadata={"ge": 2, "help": "graph auto: the largest pool clustered densely; unset: 10000"})
    landmarks: int | None = field(default=None, metadata={"ge": 2, "help": "landmark graph (auto above dense_max_rows): anchor points; unset: 1000"})
    neighbors: int | None = field(default=None, metadata={"ge": 1, "help": "landmark graph: landmarks each point links to; unset: 5"})
    embedding_model: Model | None = field(default=None, metadata={"help": "sentence-transformers folder; unset: bundled all-MiniLM-L6-v2"})
    jsd: Literal["instruction_sum", "response_mean"] = field(default="instruction_sum", metadata={
        "help": "instruction_sum: on the instruction's tokens, summed over positions (the released code); "
                "response_mean: mean per response token given the prompt (not the paper's)"})
    budget_split: Literal["floor", "largest_remainder"] = field(default="floor", metadata={
        "help": "floor: floor(B * CDS_k / sum CDS), the remainder unspent (the paper); largest_remainder: exactly B, "
                "capped at cluster sizes (not the paper's)"})
    refill: bool = field(default=False, metadata={
        "help": "fill budget left by CCG rejections from the whole pool in efficiency order (not the paper's)"})
    ccg: bool = field(default=True, metadata={"help": "apply the Concept Consistency Graph filter"})
    concepts_per_sample: int | None = field(default=None, metadata={
        "ge": 1, "help": "the CCG's concepts per sample: its top RAKE phrases; unset: all of them (the released code)"})


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
