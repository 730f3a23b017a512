"""The contract between the core and a stage file.

A stage file defines a `Config` dataclass (its recipe keys, validated before anything runs), the
outputs it produces, and `run(cfg, ctx)`, which writes those outputs under `ctx.out_dir` and returns
headline metrics. The contract:
- Inputs are the Config values typed Model, Dataset, Results, Summary or File; a value of the form
  `${stages.NAME.output.KEY}` makes the graph edge. A stage that reads other files (a built-in eval set)
  names them in `files(cfg)`. The fingerprint covers all of them: local files by content, hub models by
  id and revision (`org/name@rev`). Where only some stage kinds can feed an input, wherever it sits in the
  config (a reward term's model must be a reward model), `check_upstream(cfg, kinds)` says so: the core
  calls it and knows no stage kind itself. A stage that builds its model from nothing rather than from a model
  input says what is known of it beforehand in `built_model(cfg)` (pretrain's builtin:tiny).
- Everything another stage may read is a declared output (`outputs`); nothing reads a stage's other files.
- `progress(cfg, out_dir)` says what an interrupted run left that the next run continues from; the runner
  then keeps the stage folder and resumes instead of starting over.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

log = logging.getLogger("posttrain")

REF_PREFIX = "@stage:"


class Model(str):
    """A model input: an HF folder, a hub id, or a reference to an upstream stage's model."""


class Dataset(str):
    """A dataset input: a local file (jsonl, json, parquet, .gz), a hub id `hf:org/name[@revision][:config][:split]`,
    or a reference to an upstream stage's dataset."""


class Results(str):
    """An evaluation results folder: results.json plus per-example samples/*.jsonl."""


class Report(str):
    """A report folder (report.md, report.html, plots)."""


class Summary(str):
    """A JSON document a stage writes about its work (e.g. the select stage's selection summary)."""


class File(str):
    """A local file a stage reads as is (e.g. the report's reference numbers)."""


ARTIFACT_TYPES = {"model": Model, "dataset": Dataset, "results": Results, "report": Report, "summary": Summary,
                  "file": File}


def is_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(REF_PREFIX)


def parse_ref(value: str) -> tuple[str, str]:
    """`@stage:sft/model` -> ("sft", "model")."""
    stage, _, output = value[len(REF_PREFIX):].partition("/")
    return stage, output


def make_ref(stage: str, output: str) -> str:
    return f"{REF_PREFIX}{stage}/{output}"


def output_path(out_dir: Path, name: str, kind: type) -> Path:
    """Where a stage writes its declared output `name`: a jsonl file for datasets, a json file for summaries, a
    folder for the rest."""
    return out_dir / (f"{name}.jsonl" if kind is Dataset else f"{name}.json" if kind is Summary else name)


@dataclass
class Context:
    """What a running stage may use. Built by the runner; stages never guess paths."""

    name: str
    out_dir: Path
    run_dir: Path
    outputs: dict[str, type]
    upstream_artifacts: dict[str, dict[str, str]] = field(default_factory=dict)
    resume: str = "auto"  # off | on | auto | a checkpoint path
    seed: int = 0
    lineage: list[str] = field(default_factory=list)  # every stage upstream of this one, in run order

    def path(self, value: str) -> str:
        """Resolve a Model/Dataset value: a stage reference becomes the upstream artifact's path, a model that
        arrives as a GGUF file (builtin:smollm2-135m-instruct, gguf:PATH) its converted, cached folder."""
        if is_ref(value):
            stage, output = parse_ref(value)
            return self.upstream_artifacts[stage][output]
        from posttrain import packaged

        if isinstance(value, Model) and packaged.is_packaged(value):
            return str(packaged.local_folder(value))
        return value

    def output(self, name: str) -> Path:
        return output_path(self.out_dir, name, self.outputs[name])

    @property
    def checkpoints_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Append one row to metrics.jsonl (training curves for the report)."""
        row = {"time": time.time(), **({"step": step} if step is not None else {}), **metrics}
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, default=float) + "\n")

    def info(self, message: str) -> None:
        log.info("[%s] %s", self.name, message)

    def warn(self, message: str) -> None:
        """Shown without --verbose; stages also return it under `warnings` so the manifest keeps it."""
        log.warning("[%s] warning: %s", self.name, message)


@dataclass(frozen=True)
class BuiltModel:
    """What is known before a run of a model a stage builds from nothing, for the checks across stages."""

    context: int | None  # max_position_embeddings
    chars: frozenset[str] | None  # every character its tokenizer has a token for
    how: str  # how the stage makes it, as messages say it: "builds builtin:tiny"


class Stage:
    """Base class of every stage kind. Subclasses set `kind`, `Config`, `outputs` and implement `run`."""

    kind: ClassVar[str]
    Config: ClassVar[type]
    outputs: ClassVar[dict[str, type]]
    description: ClassVar[str] = ""

    def check(self, cfg: Any) -> list[tuple[str, str]]:
        """Extra checks that need more than types: a list of (key path inside the stage, message)."""
        return []

    def check_upstream(self, cfg: Any, kinds: dict[str, str]) -> list[tuple[str, str]]:
        """Checks of the inputs that reference other stages, wherever they sit in the config (lists included):
        (key path inside the stage, message) for each whose upstream stage's kind cannot feed it. kinds: every
        stage of the recipe, name -> kind."""
        return []

    def built_model(self, cfg: Any) -> BuiltModel | None:
        """For a stage whose model output is built from nothing, not trained from its model input: what is
        known of it before it runs. None: the output keeps its input model's context and tokenizer."""
        return None

    def files(self, cfg: Any) -> list[Path]:
        """Local files the stage reads that are not Config inputs (e.g. built-in eval sets)."""
        return []

    def progress(self, cfg: Any, out_dir: Path) -> str | None:
        """What an interrupted run left in out_dir that `run` continues from (e.g. "3 tasks done"), or None
        when it would start over. The runner keeps the folder of a stage with progress and resumes it."""
        return None

    def run(self, cfg: Any, ctx: Context) -> dict[str, Any]:
        raise NotImplementedError


STAGES: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    STAGES[cls.kind] = cls
    return cls
