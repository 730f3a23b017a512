"""Run a suite of tasks on one model: generate, score, summarise (score, n, 95% CI) and save the
per-example records as samples/<model label>/<task label>.jsonl so anyone can audit a score."""
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from posttrain.data import read_rows, write_rows
from posttrain.eval.generation import (VLLMEngine, encode_prompts, generate, load_model_and_tokenizer, load_tokenizer,
                                      needed_length, prompt_texts)
from posttrain.eval.lm_eval_backend import is_lm_eval, run_lm_eval
from posttrain.eval.tasks import TASKS, summarize_records


@dataclass
class TaskRun:
    """One task with every option resolved (task defaults, then suite-wide settings, then the task's own)."""
    name: str
    label: str
    limit: int | None
    shots: int | None
    chat: bool
    max_new_tokens: int
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    k: list[int] = field(default_factory=list)
    source: str | None = None

    @property
    def options(self) -> dict:
        return {"limit": self.limit, "shots": self.shots, "chat": self.chat, "max_new_tokens": self.max_new_tokens,
                "samples": self.samples, "temperature": self.temperature, "top_p": self.top_p, "k": self.k,
                "source": self.source}


def evaluate_model(model_path: str, label: str, runs: list[TaskRun], results_dir: Path, *, backend: str,
                   batch_size: int, seed: int, log: Callable[[str], None] = print) -> dict[str, dict]:
    """{task label: summary} for one model; samples go to results_dir/samples/<label>/<task label>.jsonl
    (named relative to results_dir in the summary). A samples file left by an interrupted run of the same
    stage config is reused, so a resumed eval stage only does the tasks it had not finished."""
    results = {}
    todo = {run.label: TASKS[run.name].rows(run.limit, shots=run.shots, chat=run.chat, source=run.source)
            for run in runs if not is_lm_eval(run.name) and not (results_dir / samples_path(label, run)).exists()}
    with _generator(model_path, backend, [r for r in runs if r.label in todo], todo, seed) as loaded:
        for run in runs:  # the built-in tasks first, with one model or engine; then lm-eval, which loads its own
            if not is_lm_eval(run.name):
                results[run.label] = _evaluate(run, model_path, label, todo.get(run.label), loaded, results_dir,
                                               batch_size=batch_size, seed=seed, log=log)
    for run in runs:
        if is_lm_eval(run.name):
            results[run.label] = _evaluate(run, model_path, label, None, None, results_dir, batch_size=batch_size,
                                           seed=seed, log=log)
    return {run.label: results[run.label] for run in runs}


def samples_path(label: str, run: TaskRun) -> str:
    return f"samples/{label}/{run.label}.jsonl"


@contextmanager
def _generator(model_path: str, backend: str, runs: list[TaskRun], rows: dict[str, list[dict]], seed: int):
    """(model or engine, tokenizer) for every built-in task of one model, or None when none is left to do. A
    vLLM engine is built once, sized for the longest prompt plus max_new_tokens over all these tasks, and
    freed on exit, before the next model's."""
    if not runs:
        yield None
    elif backend == "hf":
        yield load_model_and_tokenizer(model_path)
    else:
        tokenizer = load_tokenizer(model_path)
        length = max(needed_length(encode_prompts(tokenizer, [r["prompt"] for r in rows[run.label]], run.chat),
                                   run.max_new_tokens) for run in runs)
        with VLLMEngine(model_path, length, seed) as engine:
            yield engine, tokenizer


def _evaluate(run: TaskRun, model_path: str, label: str, rows: list[dict] | None, loaded, results_dir: Path, *,
              batch_size: int, seed: int, log: Callable[[str], None]) -> dict:
    relative = samples_path(label, run)
    path = results_dir / relative
    t0 = time.time()
    if path.exists():
        records = read_rows(path)
        log(f"{run.label}: reusing {len(records)} saved examples")
    elif is_lm_eval(run.name):
        records = run_lm_eval(model_path, run.name, limit=run.limit, shots=run.shots, chat=run.chat,
                              batch_size=batch_size, seed=seed)
    else:
        records = _run_builtin(run, rows, loaded, batch_size, seed)
    if not path.exists():
        write_rows(path, records)
    summary = summarize_records(records, seed)
    log(f"{run.label}: {summary['score']:.3f} (n={summary['n']}, 95% CI {summary['ci'][0]:.3f}-{summary['ci'][1]:.3f})")
    return {**summary, **_describe(run, records), "options": run.options, "samples": relative,
            "wall_time_s": round(time.time() - t0, 2)}


def _run_builtin(run: TaskRun, rows: list[dict], loaded, batch_size: int, seed: int) -> list[dict]:
    model, tokenizer = loaded
    prompts = [r["prompt"] for r in rows]
    completions = generate(model, tokenizer, prompts, max_new_tokens=run.max_new_tokens, temperature=run.temperature,
                           top_p=run.top_p, n=run.samples, seed=seed, batch_size=batch_size, chat=run.chat,
                           backend="vllm" if isinstance(model, VLLMEngine) else "hf")
    records = TASKS[run.name].score(completions, rows, run.chat, ks=tuple(run.k))
    for record, text in zip(records, prompt_texts(tokenizer, prompts, run.chat)):  # the text the model saw
        record["prompt_text"] = text
    return records


def _describe(run: TaskRun, records: list[dict]) -> dict:
    if is_lm_eval(run.name):
        return {"task": run.name, "skill": "lm-eval", "metric": records[0]["metric"]}
    task = TASKS[run.name]
    return {"task": run.name, "skill": task.skill, "metric": task.metric, "description": task.description}
