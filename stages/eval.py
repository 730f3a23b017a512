"""Evaluate one or more models (stage outputs, the base, or any HF path) on a suite of tasks. Labels become
the report's columns in the order given. Output: results.json + samples/<label>/<task>.jsonl."""
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from posttrain import hf
from posttrain.data import write_json
from posttrain.eval.tasks import TaskSpec
from posttrain.schema import suggest
from posttrain.stage import Context, Model, Results, Stage, register

LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class EvalConfig:
    models: dict[str, Model] = field(metadata={"help": "label -> model; labels are the report's columns, in order"})
    tasks: list[TaskSpec] = field(metadata={"help": "the suite; each item at least {name: ...}"})
    limit: int | None = field(default=None, metadata={"ge": 1, "help": "default per-task example limit"})
    max_new_tokens: int | None = field(default=None, metadata={"ge": 1, "help": "default (else the task's)"})
    temperature: float = field(default=0.0, metadata={"ge": 0, "help": "0 = greedy"})
    top_p: float = field(default=1.0, metadata={"gt": 0, "le": 1})
    batch_size: int = field(default=16, metadata={"ge": 1})
    backend: Literal["hf", "vllm"] = "hf"
    seed: int = 0


@register
class Eval(Stage):
    kind = "eval"
    Config = EvalConfig
    outputs = {"results": Results}
    description = "benchmark scores with n and 95% CI per model and task"

    def check(self, cfg: EvalConfig) -> list[tuple[str, str]]:
        from posttrain.eval.lm_eval_backend import is_lm_eval
        from posttrain.eval.tasks import TASKS

        problems = [(f"models.{label}", "labels become file and column names: letters, digits, _ . -")
                    for label in cfg.models if not LABEL_RE.match(label)]
        if not cfg.models:
            problems.append(("models", "name at least one model to evaluate"))
        if not cfg.tasks:
            problems.append(("tasks", "name at least one task"))
        if cfg.backend == "vllm":
            problems += hf.vllm_problem("backend", "backend vllm")
        seen = set()
        for i, spec in enumerate(cfg.tasks):
            where = f"tasks[{i}]"
            if not is_lm_eval(spec.name) and spec.name not in TASKS:
                problems.append((f"{where}.name", f"unknown task '{spec.name}'{suggest(spec.name, TASKS)}; built-in: "
                                                  f"{', '.join(TASKS)}, or lm_eval:<task>"))
            label = spec.label or spec.name
            if not LABEL_RE.match(label.replace(":", "_")):
                problems.append((f"{where}.label", f"'{label}': use letters, digits, _ . -"))
            if label in seen:
                problems.append((f"{where}.label", f"two tasks are labelled '{label}'; give one a distinct label"))
            seen.add(label)
            problems += [(f"{where}.k", f"pass@{k} needs samples >= {k} (samples is {spec.samples})")
                         for k in spec.k if k > spec.samples or k < 1]
            if spec.samples > 1 and (spec.temperature if spec.temperature is not None else cfg.temperature) == 0:
                problems.append((f"{where}.samples", "several samples under greedy decoding are identical; "
                                                     "set temperature > 0 (e.g. 0.8) for pass@k"))
        return problems

    def files(self, cfg: EvalConfig) -> list[Path]:
        from posttrain.eval.lm_eval_backend import is_lm_eval
        from posttrain.eval.tasks import TASKS

        return [f for spec in cfg.tasks if not is_lm_eval(spec.name)
                for f in TASKS[spec.name].files(spec.source, spec.shots)]

    def progress(self, cfg: EvalConfig, out_dir: Path) -> str | None:
        """evaluate_model reuses the samples file of every (model, task) an interrupted run finished."""
        done = list((out_dir / "results" / "samples").glob("*/*.jsonl"))
        return f"{len(done)} of {len(cfg.models) * len(cfg.tasks)} model-task results" if done else None

    def run(self, cfg: EvalConfig, ctx: Context) -> dict:
        from posttrain.eval.reuse import ResultCache
        from posttrain.eval.suite import evaluate_model, samples_path

        out = ctx.output("results")
        runs = [resolve(dataclasses.replace(spec, source=ctx.path(spec.source) if spec.source else None), cfg)
                for spec in cfg.tasks]
        results = {"seed": cfg.seed, "backend": cfg.backend, "models": {}}
        cache, reused = ResultCache(ctx.run_dir, cfg.backend, cfg.seed, cfg.batch_size), []
        for label, model in cfg.models.items():
            path = ctx.path(model)
            keys = {run.label: cache.key(path, run) for run in runs}
            # a (model, task) whose model and settings an earlier run of this stage already evaluated
            hits = [run.label for run in runs if cache.restore(keys[run.label], out / samples_path(label, run))]
            reused += [f"{label}/{task}" for task in hits]
            ctx.info(f"evaluating {label} ({path})" + (f"; reusing {', '.join(hits)}" if hits else ""))
            tasks = evaluate_model(path, label, runs, out, backend=cfg.backend,
                                   batch_size=cfg.batch_size, seed=cfg.seed, log=lambda m: ctx.info(f"{label}/{m}"))
            for run in runs:
                cache.keep(keys[run.label], out / samples_path(label, run))
                tasks[run.label]["reused"] = run.label in hits
            results["models"][label] = {"model": path, "tasks": tasks}
        write_json(out / "results.json", results)
        return {**{f"{label}/{task}": r["score"] for label, m in results["models"].items() for task, r in m["tasks"].items()},
                "reused_results": len(reused)}


def resolve(spec: TaskSpec, cfg: EvalConfig):
    """A TaskSpec with the suite's settings and the task's defaults filled in."""
    from posttrain.eval.lm_eval_backend import is_lm_eval
    from posttrain.eval.suite import TaskRun
    from posttrain.eval.tasks import TASKS

    task = None if is_lm_eval(spec.name) else TASKS[spec.name]
    return TaskRun(
        name=spec.name, label=(spec.label or spec.name).replace(":", "_"),
        limit=spec.limit if spec.limit is not None else cfg.limit,
        shots=spec.shots if spec.shots is not None or task is None else task.shots,
        chat=spec.chat if spec.chat is not None else (task.chat if task else True),
        max_new_tokens=spec.max_new_tokens or cfg.max_new_tokens or (task.max_new_tokens if task else 256),
        samples=spec.samples, temperature=spec.temperature if spec.temperature is not None else cfg.temperature,
        top_p=cfg.top_p, k=list(spec.k), source=spec.source)
