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
    reference_model: Model | None = field(default=None, metadata={"help": "the model to recover towards (e.g. the unpruned one); `model` is the target"})
    clusters: int | None = field(default=None, metadata={"ge": 1, "help": "K; unset: chosen by the eigengap"})
    max_clusters: int = field(default=30, metadata={"ge": 2})
    landmarks: int = field(default=1000, metadata={"ge": 2, "help": "anchor points of the kNN graph"})
    neighbors: int = field(default=5, metadata={"ge": 1, "help": "landmarks each point links to"})
    embedding_model: Model | None = field(default=None, metadata={"help": "sentence-transformers folder; unset: bundled all-MiniLM-L6-v2"})
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
