"""Generation on a tiny random model, the built-in tasks on their real rows and real verifiers, the
metrics, and the eval + report stages end to end through the runner."""
import json
import math
from pathlib import Path

import pytest

from posttrain import hf
from posttrain.worlds import tinyworld
from posttrain.eval.generation import generate
from posttrain.eval.metrics import pass_at_k, summarize
from posttrain.eval.tasks import TASKS, summarize_records

# A larger init scale than the default makes a random model's output depend on its prompt.
TINY_ARCH = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                 initializer_range=0.3)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = tinyworld.build_tokenizer()
    return tinyworld.build_model(tokenizer, seed=0, **TINY_ARCH).eval(), tokenizer


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory) -> Path:
    model, tokenizer = tiny
    path = tmp_path_factory.mktemp("tiny") / "model"
    hf.save_model(model, tokenizer, path)
    return path


PROMPTS = [r["prompt"] for r in tinyworld.heldout_rows(5)] + [[{"role": "user", "content": "Hi"}]]


# ---------- generation ----------
def test_batched_greedy_matches_one_at_a_time_in_input_order(tiny):
    model, tokenizer = tiny
    batched = generate(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=4, n=2)
    assert len(batched) == len(PROMPTS) and all(len(c) == 2 and c[0] == c[1] for c in batched)
    singles = [generate(model, tokenizer, [p], max_new_tokens=12, batch_size=1)[0][0] for p in PROMPTS]
    assert [c[0] for c in batched] == singles
    assert len(set(singles)) > 1  # the prompts' answers differ, so order matters for the comparison


def test_generation_stops_at_eos(tiny):
    model, tokenizer = tiny
    full = generate(model, tokenizer, PROMPTS[:1], max_new_tokens=16)[0][0]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    stop = ids[len(ids) // 2]  # a token the model emits mid-completion becomes its end-of-turn token
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    try:
        cut = generate(model, tokenizer, PROMPTS[:1], max_new_tokens=16)[0][0]
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    assert cut == tokenizer.decode(ids[:ids.index(stop)])
    assert len(cut) < len(full)


def test_sampling_is_seeded_and_gives_n_distinct_samples(tiny):
    model, tokenizer = tiny
    kwargs = dict(max_new_tokens=10, temperature=1.0, n=3, seed=7, batch_size=2)
    first = generate(model, tokenizer, PROMPTS[:3], **kwargs)
    assert first == generate(model, tokenizer, PROMPTS[:3], **kwargs)
    assert all(len(c) == 3 for c in first) and len(set(first[0])) > 1


def test_plain_prompts_and_path_models(tiny_folder):
    out = generate(str(tiny_folder), None, ["Q: 12+30?\nA:"], max_new_tokens=5, chat=False)
    assert len(out) == 1 and isinstance(out[0][0], str)
    with pytest.raises(ValueError, match="chat=False needs plain-string prompts"):
        generate(str(tiny_folder), None, PROMPTS[:1], max_new_tokens=5, chat=False)


def test_vllm_backend_without_vllm_says_so(tiny_folder):
    pytest.importorskip("posttrain.rewards")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="vLLM is not installed"):
        generate(str(tiny_folder), None, PROMPTS[:1], max_new_tokens=5, backend="vllm")


# ---------- tasks on their real rows ----------
EXPECTED_ROWS = {"gsm8k_8shot": 1319, "gsm8k_0shot": 1319, "math500": 500, "ifeval": 541, "humaneval": 164,
                 "mbpp": 500, "tinyworld": 500, "tinyworld_format": 500, "tinyworld_code": 225,
                 "tinyworld_courtesy": 500}
GOLD = {"gsm8k_8shot": lambda r: f"... so the answer is {r['ground_truth']}.",
        "gsm8k_0shot": lambda r: f"The answer is {r['ground_truth']}.",
        "math500": lambda r: f"The final answer is $\\boxed{{{r['ground_truth']}}}$",
        "humaneval": lambda r: r["ground_truth"],  # the canonical body continues the prompt
        "mbpp": lambda r: f"```python\n{r['ground_truth']}\n```",
        "tinyworld": lambda r: f"The answer is {r['ground_truth']}.",
        **{f"tinyworld_{s}": lambda r: r["ground_truth"] for s in ("format", "code", "courtesy")}}
WRONG = {"humaneval": lambda r: "    return None\n", "mbpp": lambda r: "```python\nx = 1\n```",
         "tinyworld_format": lambda r: "cat", "tinyworld_code": lambda r: "def f(x): return 0",
         "tinyworld_courtesy": lambda r: "OK."}


def test_every_builtin_task_is_checked_here():
    assert set(TASKS) == set(EXPECTED_ROWS)


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_task_loads_its_real_rows(name):
    task = TASKS[name]
    rows = task.rows()
    assert len(rows) == EXPECTED_ROWS[name] and len({r["id"] for r in rows}) == len(rows)
    assert all(r["verifier"] == task.verifier and isinstance(r["ground_truth"], str) for r in rows)
    chat, plain = task.rows(2)[0]["prompt"], task.rows(2, chat=False)[0]["prompt"]
    assert chat[-1]["role"] == "user" and len(chat) == 2 * task.shots + 1
    assert isinstance(plain, str) and plain.count("Question:") in (0, task.shots + 1)


@pytest.mark.parametrize("name", sorted(GOLD))
@pytest.mark.parametrize("chat", [True, False])
def test_gold_answers_score_correct_and_wrong_ones_do_not(name, chat):
    task = TASKS[name]
    rows = task.rows(4, chat=chat)
    gold = task.score([[GOLD[name](r)] for r in rows], rows, chat)
    assert [r["score"] for r in gold] == [1.0] * len(rows), [r["reasons"] for r in gold]
    wrong = WRONG.get(name, lambda r: f"The answer is {r['ground_truth']}1.")
    assert [r["score"] for r in task.score([[wrong(r)] for r in rows], rows, chat)] == [0.0] * len(rows)


def test_ifeval_scores_prompt_and_instruction_level():
    task = TASKS["ifeval"]
    rows = [r for r in task.rows() if r["instruction_id_list"] == ["punctuation:no_comma"]][:2]
    records = task.score([["No commas here at all."], ["Commas, everywhere, here."]], rows, chat=True)
    assert [r["score"] for r in records] == [1.0, 0.0]
    assert [r["instruction_strict"] for r in records] == [[True], [False]]
    summary = summarize_records(records)
    assert set(summary["metrics"]) == {"prompt_loose", "instruction_strict", "instruction_loose"}
    assert summary["metrics"]["instruction_strict"]["n"] == 2


def test_pass_at_k_from_several_samples():
    task = TASKS["mbpp"]
    rows = task.rows(2)
    good, bad = GOLD["mbpp"](rows[0]), WRONG["mbpp"](rows[0])
    records = task.score([[good, bad, bad, good], [bad] * 4], rows, chat=True, ks=(2,))
    assert [r["score"] for r in records] == [0.5, 0.0]
    assert records[0]["pass@2"] == pytest.approx(1 - math.comb(2, 2) / math.comb(4, 2))
    summary = summarize_records(records)
    assert summary["ci_method"] == "bootstrap" and summary["metrics"]["pass@2"]["score"] == pytest.approx(5 / 12)


# ---------- metrics ----------
def test_summaries_carry_n_and_a_ci_around_the_score():
    s = summarize([1, 0, 1, 1, 0, 1, 1, 1])
    assert s["n"] == 8 and s["ci_method"] == "wilson" and s["ci"][0] < s["score"] < s["ci"][1]
    b = summarize([0.1, 0.5, 0.9, 0.3, 0.7])
    assert b["ci_method"] == "bootstrap" and b["ci"][0] < 0.5 < b["ci"][1]
    assert pass_at_k(5, 0, 1) == 0 and pass_at_k(5, 5, 3) == 1 and pass_at_k(5, 1, 1) == pytest.approx(0.2)


# ---------- the stages, end to end ----------
RECIPE = """
name: evaldemo
stages:
  eval:
    kind: eval
    models: {first: MODEL, second: MODEL}
    tasks:
      - {name: tinyworld, limit: 6}
      - {name: tinyworld, label: tinyworld_plain, chat: false, limit: 4, max_new_tokens: 24}
    max_new_tokens: 32
    batch_size: 4
  report:
    kind: report
    results: ["${stages.eval.output.results}"]
"""


def test_eval_and_report_stages_through_the_runner(tiny_folder, tmp_path):
    import posttrain.stages.eval  # noqa: F401  (registers the kinds)
    import posttrain.stages.report  # noqa: F401
    from posttrain.recipe import load
    from posttrain.runner import run

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("MODEL", str(tiny_folder)))
    run_dir = tmp_path / "run"
    run(load(recipe), run_dir, echo=lambda m: None)
    manifest = json.loads((run_dir / "eval" / "manifest.json").read_text())
    results_dir = run_dir / manifest["artifacts"]["results"]
    results = json.loads((results_dir / "results.json").read_text())
    assert list(results["models"]) == ["first", "second"]
    for label, model in results["models"].items():
        for task, entry in model["tasks"].items():
            samples = [json.loads(line) for line in open(results_dir / entry["samples"])]
            assert entry["n"] == len(samples) == (6 if task == "tinyworld" else 4)
            assert entry["score"] == manifest["metrics"][f"{label}/{task}"]
            assert entry["score"] == sum(s["score"] for s in samples) / len(samples)
    plain = [json.loads(line) for line in open(results_dir / results["models"]["first"]["tasks"]["tinyworld_plain"]["samples"])]
    assert plain[0]["prompt_text"].startswith("Q: ") and "<|user|>" not in plain[0]["prompt_text"]
    html = (run_dir / "report" / "report" / "report.html").read_text()
    assert "tinyworld_plain" in html and "first" in html and "second" in html

    steps = run(load(recipe), run_dir, echo=lambda m: None)
    assert {s.name: s.action for s in steps} == {"eval": "cached", "report": "cached"}


def test_eval_config_mistakes_are_reported():
    from posttrain.stages.eval import Eval, EvalConfig, TaskSpec

    problems = Eval().check(EvalConfig(models={"bad label": "x"}, tasks=[
        TaskSpec("gsm8k_8sht"), TaskSpec("mbpp", samples=2, k=[5], temperature=0.8), TaskSpec("mbpp", samples=4)]))
    text = " ".join(m for _, m in problems)
    assert "did you mean 'gsm8k_8shot'" in text and "pass@5 needs samples >= 5" in text
    assert "labelled 'mbpp'" in text and "greedy decoding are identical" in text and "labels become" in text


def test_lm_eval_samples_become_records(monkeypatch):
    """lm-eval's per-document output (here a canned one: no datasets offline) is pooled over subtasks."""
    import lm_eval

    from posttrain.eval.lm_eval_backend import run_lm_eval

    def fake(**kwargs):
        assert kwargs["tasks"] == ["mmlu"] and kwargs["limit"] == 2 and kwargs["log_samples"]
        sample = lambda i, acc: {"doc_id": i, "target": "B", "filtered_resps": [["-1.2", "-0.3"]], "acc": acc}
        return {"results": {"mmlu": {"alias": "mmlu", "acc,none": 0.5, "acc_stderr,none": 0.1}},
                "samples": {"mmlu_algebra": [sample(0, 1.0), sample(1, 0.0)], "mmlu_law": [sample(0, 1.0)]}}

    monkeypatch.setattr(lm_eval, "simple_evaluate", fake)
    records = run_lm_eval("model", "lm_eval:mmlu", limit=2, shots=0, chat=False, batch_size=1, seed=0)
    assert [(r["id"], r["score"], r["metric"]) for r in records] == [
        ("mmlu_algebra-0", 1.0, "acc"), ("mmlu_algebra-1", 0.0, "acc"), ("mmlu_law-0", 1.0, "acc")]
    assert summarize_records(records)["score"] == pytest.approx(2 / 3)
