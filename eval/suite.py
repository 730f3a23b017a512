"""Run a suite of tasks on one model: generate, score, summarise (score, n, 95% CI) and save the
per-example records as samples/<model label>/<task label>.jsonl so anyone can audit a score."""
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from posttrain.data import read_rows, write_rows
from posttrain.eval.generation import generate, load_model_and_tokenizer, prompt_texts
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
    loaded = None
    results = {}
    for run in runs:
        relative = f"samples/{label}/{run.label}.jsonl"
        path = results_dir / relative
        t0 = time.time()
        if path.exists():
            records = read_rows(path)
            log(f"{run.label}: reusing {len(records)} saved examples")
        elif is_lm_eval(run.name):
            records = run_lm_eval(model_path, run.name, limit=run.limit, shots=run.shots, chat=run.chat,
                                     batch_size=batch_size, seed=seed)
        else:
            if loaded is None and backend == "hf":
                loaded = load_model_and_tokenizer(model_path)
            records = _run_builtin(run, model_path, loaded, backend, batch_size, seed)
        if not path.exists():
            write_rows(path, records)
        summary = summarize_records(records, seed)
        results[run.label] = {**summary, **_describe(run, records), "options": run.options, "samples": relative,
                              "wall_time_s": round(time.time() - t0, 2)}
        log(f"{run.label}: {summary['score']:.3f} (n={summary['n']}, 95% CI {summary['ci'][0]:.3f}-{summary['ci'][1]:.3f})")
    return results


def _run_builtin(run: TaskRun, model_path: str, loaded, backend: str, batch_size: int, seed: int) -> list[dict]:
    task = TASKS[run.name]
    rows = task.rows(run.limit, shots=run.shots, chat=run.chat, source=run.source)
    model, tokenizer = loaded if loaded else (model_path, None)
    completions = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=run.max_new_tokens,
                           temperature=run.temperature, top_p=run.top_p, n=run.samples, seed=seed,
                           batch_size=batch_size, chat=run.chat, backend=backend)
    records = task.score(completions, rows, run.chat, ks=tuple(run.k))
    if tokenizer is not None:  # the exact text the model saw, for auditing templates
        for record, text in zip(records, prompt_texts(tokenizer, [r["prompt"] for r in rows], run.chat)):
            record["prompt_text"] = text
    return records


def _describe(run: TaskRun, records: list[dict]) -> dict:
    if is_lm_eval(run.name):
        return {"task": run.name, "skill": "lm-eval", "metric": records[0]["metric"]}
    task = TASKS[run.name]
    return {"task": run.name, "skill": task.skill, "metric": task.metric, "description": task.description}
