"""The stage contract: what a stage reads is a declared, typed input its fingerprint covers (hub models by
revision, eval sets by content), what another stage reads is a declared output, the report opens nothing
else, how a stage resumes is its own, and a cached stage made with other package versions is named."""
import json
import sys
from pathlib import Path

import pytest

from conftest import posttrain_cli, write_recipe
from posttrain import hf, schema
from posttrain import store as st
from posttrain.data import iter_rows, write_json, write_rows
from posttrain.recipe import load
from posttrain.runner import plan, run
from posttrain.stages.select import SelectConfig

RECIPE = """
name: contract
stages:
  select:
    kind: select
    method: length
    data: {data}
    budget: {{count: 3}}
  other:                          # a select stage the report is not given
    kind: select
    method: random
    data: {data}
    budget: {{count: 2}}
  report:
    kind: report
    results: [{results}]
    selection: ["${{stages.select.output.summary}}"]
"""


@pytest.fixture
def recipe_path(tmp_path, sft_file) -> Path:
    """A recipe whose report reads a results folder (a plain input) and the select stage's summary."""
    results = tmp_path / "results"
    write_json(results / "results.json", {"seed": 0, "backend": "hf", "models": {"m": {"model": "m", "tasks": {
        "tinyworld": {"score": 0.5, "n": 2, "ci": [0.1, 0.9], "skill": "tiny world", "metric": "exact match"}}}}})
    return write_recipe(tmp_path, RECIPE.format(data=sft_file, results=results))


def actions(path: Path, run_dir: Path, *overrides: str) -> dict[str, tuple[str, str]]:
    return {s.name: (s.action, s.reason) for s in plan(load(path, list(overrides)), st.RunStore(run_dir))}


def test_a_changed_select_summary_reruns_the_cached_report(recipe_path, tmp_path):
    run_dir = tmp_path / "run"
    run(load(recipe_path), run_dir, echo=lambda m: None)
    assert {a for a, _ in actions(recipe_path, run_dir).values()} == {"cached"}
    changed = actions(recipe_path, run_dir, "stages.select.budget.count=4")
    assert changed["select"][0] == changed["report"][0] == "run"  # the report's fingerprint covers select's
    assert changed["other"][0] == "cached"
    # a summary edited by hand: select reruns, and so does the report that shows it
    summary = run_dir / "select" / "summary.json"
    summary.write_text(summary.read_text().replace('"kept_rows": 3', '"kept_rows": 30'))
    edited = actions(recipe_path, run_dir)
    assert edited["select"][0] == "run" and edited["report"][0] == "run"


def test_the_report_opens_only_its_inputs(recipe_path, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    recipe = load(recipe_path)
    run(recipe, run_dir, echo=lambda m: None)
    # decoys the old report read: a stray selection summary and an eval stage nobody named
    write_json(run_dir / "other" / "selection_summary.json", {"method": "decoy"})
    write_json(run_dir / "stray" / "manifest.json", {"stage": "stray", "kind": "eval", "status": "complete",
                                                      "artifacts": {"results": "stray/results"}})
    opened: list[Path] = []
    import posttrain.eval.report as report

    real = report.build_report

    def watched(*args, **kwargs):
        hook_on[0] = True
        try:
            return real(*args, **kwargs)
        finally:
            hook_on[0] = False
    hook_on = [False]
    sys.addaudithook(lambda event, a: opened.append(Path(a[0])) if hook_on[0] and event == "open"
                     and isinstance(a[0], (str, Path)) else None)
    monkeypatch.setattr(report, "build_report", watched)
    run(recipe, run_dir, only="report", force=True, echo=lambda m: None)
    inside = {p.resolve().relative_to(run_dir.resolve()).as_posix() for p in opened
              if p.resolve().is_relative_to(run_dir.resolve())}
    assert "select/summary.json" in inside  # it did read its input
    # the upstream stage's resolved config (its hyperparameters) is what its fingerprint hashes
    allowed = {"run.json", "select/summary.json", "select/manifest.json", "select/metrics.jsonl", "select/config.resolved.yaml"}
    assert {p for p in inside if not p.startswith("report/report/")} <= allowed, inside
    md = (run_dir / "report" / "report" / "report.md").read_text()
    assert "Selection: select (length)" in md and "decoy" not in md and "other" not in md
    # the report counts the stages it reports on, not itself (it is still running while it writes)
    assert md.splitlines()[2].startswith("1 of the 1 stages upstream of this report complete (select)") and "running" not in md


def test_a_hub_model_is_fingerprinted_by_the_commit_its_revision_names(tmp_path, monkeypatch, sft_file):
    cache = tmp_path / "hub"
    refs = cache / "models--org--tiny" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    path = write_recipe(tmp_path, f"""
        name: hub
        stages:
          select: {{kind: select, method: perplexity, model: org/tiny, data: {sft_file}, budget: {{count: 2}}}}
          pinned: {{kind: select, method: perplexity, model: "org/tiny@v1", data: {sft_file}, budget: {{count: 2}}}}
        """)

    def fingerprints(*overrides):
        return {s.name: (s.fingerprint, s.inputs) for s in plan(load(path, list(overrides)), st.RunStore(tmp_path / "r"))}
    before = fingerprints()
    assert f"hub:org/tiny@{'a' * 40}" in before["select"][1].values()
    assert "hub:org/tiny@v1" in before["pinned"][1].values()  # not in the cache: the revision as given
    (refs / "main").write_text("b" * 40)  # the branch moved on the hub; the recipe text did not change
    after = fingerprints()
    assert after["select"][0] != before["select"][0] and after["pinned"][0] == before["pinned"][0]
    assert fingerprints("stages.pinned.model=org/tiny@v2")["pinned"][0] != before["pinned"][0]


def test_a_hub_dataset_is_fingerprinted_by_the_commit_its_revision_names(tmp_path, monkeypatch):
    refs = tmp_path / "hub" / "datasets--org--set" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    path = write_recipe(tmp_path, """
        name: hubdata
        stages:
          latest: {kind: select, method: random, data: "hf:org/set:main:test", budget: {count: 2}}
          pinned: {kind: select, method: random, data: "hf:org/set@v1", budget: {count: 2}}
        """)

    def fingerprints(*overrides):
        return {s.name: (s.fingerprint, s.inputs) for s in plan(load(path, list(overrides)), st.RunStore(tmp_path / "r"))}
    before = fingerprints()
    assert before["latest"][1] == {"hf:org/set:main:test": f"hub:org/set@{'a' * 40}:main:test"}
    assert before["pinned"][1] == {"hf:org/set@v1": "hub:org/set@v1"}  # not in the cache: as given
    (refs / "main").write_text("b" * 40)  # the dataset's main branch moved on the hub
    after = fingerprints()
    assert after["latest"][0] != before["latest"][0] and after["pinned"][0] == before["pinned"][0]
    assert fingerprints("stages.pinned.data=hf:org/set@v2")["pinned"][0] != before["pinned"][0]
    bad = write_recipe(tmp_path, """
        name: bad
        stages:
          s: {kind: select, method: random, data: "hf:org/set@:main", budget: {count: 2}}
        """)
    result = posttrain_cli("validate", str(bad))
    assert result.returncode == 2 and "hf:org/name@revision" in result.stderr and "Traceback" not in result.stderr


def test_hub_datasets_pass_the_revision_to_load_dataset(monkeypatch):
    import datasets

    asked = []

    def fake(name, config=None, **kwargs):
        asked.append((name, config, kwargs.get("split"), kwargs.get("revision")))
        return [{"prompt": "p", "completion": "c"}]
    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert list(iter_rows("hf:org/set@v2:main:test")) == [{"prompt": "p", "completion": "c"}]
    list(iter_rows("hf:org/set"))
    assert asked == [("org/set", "main", "test", "v2"), ("org/set", None, "train", None)]


def test_loaders_pass_the_revision_to_the_hub(monkeypatch):
    from transformers import AutoTokenizer

    asked = []

    def fake(name, **kwargs):
        asked.append((name, kwargs.get("revision")))
        raise LookupError("stop here")
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake)
    for load_one in (hf.load_tokenizer, hf.load_for_inference):
        with pytest.raises(LookupError):
            load_one("org/tiny@v2")
    assert asked == [("org/tiny", "v2")] * 2
    assert hf.split_revision("org/tiny") == ("org/tiny", None)


def test_only_typed_values_are_inputs(tmp_path, sft_file):
    """A string that happens to name a file is not an input (it used to be guessed from '/' or '.')."""
    bystander = tmp_path / "notes.txt"
    bystander.write_text("x")
    problems: list = []
    cfg = schema.build(SelectConfig, {"data": str(sft_file), "method": "single_source",
                                      "grape": {"source": str(bystander)}}, "", problems, lambda s, o: "no refs")
    assert problems == []
    found = st.inputs(cfg, [], st.HashCache(tmp_path / "h.json"))
    assert list(found) == [str(sft_file)]


def test_decontamination_follows_the_eval_tasks_and_their_files(tmp_path, sft_file):
    own = tmp_path / "my_eval.jsonl"
    write_rows(own, [{"question": "How many apples are left if you eat three of twelve apples today?",
                      "answer": "#### 9"}])
    path = write_recipe(tmp_path, f"""
        name: decon
        stages:
          select:
            kind: select
            method: length
            data: {sft_file}
            budget: {{count: 2}}
            decontaminate: {{tasks: "${{stages.eval.tasks}}"}}
          eval:
            kind: eval
            models: {{m: org/tiny}}
            tasks: [{{name: gsm8k_0shot, source: {own}}}, {{name: math500}}]
        """)
    recipe = load(path)
    tasks = recipe.stages["select"].config.decontaminate.tasks
    assert [t.name for t in tasks] == ["gsm8k_0shot", "math500"] and tasks[0].source == str(own)

    def select_step():
        return next(s for s in plan(load(path), st.RunStore(tmp_path / "r")) if s.name == "select")
    before = select_step()
    assert str(own) in before.inputs and any(p.endswith("math500/test.jsonl") for p in before.inputs)
    own.write_text(own.read_text().replace("apples", "pears"))
    assert select_step().fingerprint != before.fingerprint  # an eval set changed: decontamination reruns


def test_a_stage_resumes_by_its_own_progress(recipe_path, tmp_path):
    run_dir = tmp_path / "run"
    run(load(recipe_path), run_dir, echo=lambda m: None)
    manifest = run_dir / "select" / "manifest.json"
    write_json(manifest, {**json.loads(manifest.read_text()), "status": "failed"})
    assert actions(recipe_path, run_dir)["select"][0] == "run"  # length scores nothing: no progress to keep
    write_rows(run_dir / "select" / "scores.jsonl", [{"index": i, "scores": [0.0]} for i in range(5)])
    action, reason = actions(recipe_path, run_dir)["select"]
    assert action == "resume" and "5 rows scored" in reason


def test_a_cached_stage_made_with_other_versions_is_named_not_rerun(recipe_path, tmp_path):
    run_dir = tmp_path / "run"
    run(load(recipe_path), run_dir, echo=lambda m: None)
    packages = json.loads((run_dir / "run.json").read_text())["packages"]
    assert {"torch", "transformers", "trl", "accelerate", "peft", "datasets", "posttrain"} <= set(packages)
    manifest = run_dir / "other" / "manifest.json"
    m = json.loads(manifest.read_text())
    assert m["versions"] == packages
    write_json(manifest, {**m, "versions": {**m["versions"], "transformers": "4.0.0"}})
    for args in (["plan", str(recipe_path), "--out", str(run_dir)], ["status", str(run_dir)]):
        out = posttrain_cli(*args, check=True).stdout
        assert "warning: stage 'other' made with transformers 4.0.0" in " ".join(out.split()), out
        assert "stage 'select'" not in out
    assert {a for a, _ in actions(recipe_path, run_dir).values()} == {"cached"}


def test_generate_resumes_from_its_saved_chunks(tmp_path, monkeypatch):
    """Killed in its third chunk, the generate stage redoes only the unsaved chunks and ends with the pairs and
    samples of an uninterrupted run (each chunk's seeds do not depend on where the run started)."""
    import posttrain.eval.generation as generation
    from posttrain.data import read_rows
    from posttrain.stage import Context
    from posttrain.stages.generate import Generate, GenerateConfig

    prompts = tmp_path / "prompts.jsonl"
    write_rows(prompts, [{"id": j, "prompt": f"What is {j}?", "ground_truth": str(j), "verifier": "numeric"}
                         for j in range(10)])
    seeds: list[int] = []

    def fake_generate(model, tokenizer, texts, *, n, seed, **kwargs):
        seeds.append(seed)
        if len(seeds) == kill_at[0]:
            raise KeyboardInterrupt
        return [[f"The answer is {t.split()[-1][:-1]}."] + [f"The answer is {seed * 100 + i}."] * (n - 1)
                for i, t in enumerate(texts)]
    kill_at = [0]
    monkeypatch.setattr(generation, "generate", fake_generate)
    monkeypatch.setattr(generation, "load_model_and_tokenizer", lambda path: ("model", "tokenizer"))
    cfg = GenerateConfig(model="org/tiny", prompts=str(prompts), num_samples=2, batch_size=2, chunk_prompts=4)

    def run_in(out: Path) -> tuple[list, list]:
        out.mkdir(exist_ok=True)
        Generate().run(cfg, Context("pairs", out, tmp_path, Generate.outputs, {}, "auto"))
        return read_rows(out / "pairs.jsonl"), read_rows(out / "samples.jsonl")

    whole = run_in(tmp_path / "whole")
    assert seeds == [0, 2, 4]  # 3 chunks of 2 batches: each chunk's batch seeds follow on
    seeds.clear()
    kill_at[0] = 3
    with pytest.raises(KeyboardInterrupt):
        run_in(tmp_path / "killed")
    assert Generate().progress(cfg, tmp_path / "killed") == "2 chunk(s) of 4 prompts sampled"
    seeds.clear()
    kill_at[0] = 0
    assert run_in(tmp_path / "killed") == whole and seeds == [4]


def test_generate_adds_the_extra_pairs_after_the_on_policy_ones(tmp_path, monkeypatch):
    """`extra_pairs` (off-policy, e.g. the tiny world's judged courtesy pairs) follow the verified on-policy
    pairs in the output, unchanged, and are counted apart."""
    import posttrain.eval.generation as generation
    from posttrain.data import read_rows
    from posttrain.stage import Context
    from posttrain.stages.generate import Generate, GenerateConfig
    from posttrain.worlds import tinyworld

    prompts, extra = tmp_path / "prompts.jsonl", tmp_path / "judged.jsonl"
    write_rows(prompts, [{"id": j, "prompt": f"What is {j}?", "ground_truth": str(j), "verifier": "numeric"} for j in range(3)])
    write_rows(extra, tinyworld.judged_pairs(4, seed=0))
    monkeypatch.setattr(generation, "generate", lambda model, tok, texts, *, n, **kw:
                        [[f"The answer is {t.split()[-1][:-1]}.", "The answer is -1."] for t in texts])
    monkeypatch.setattr(generation, "load_model_and_tokenizer", lambda path: ("model", "tokenizer"))
    cfg = GenerateConfig(model="org/tiny", prompts=str(prompts), num_samples=2, extra_pairs=str(extra))
    (tmp_path / "out").mkdir()
    result = Generate().run(cfg, Context("pairs", tmp_path / "out", tmp_path, Generate.outputs, {}, "auto"))
    pairs = read_rows(tmp_path / "out" / "pairs.jsonl")
    assert result["pairs"] == 3 and result["extra_pairs"] == 4
    assert [p["chosen"][0]["content"] for p in pairs[:3]] == [f"The answer is {j}." for j in range(3)]
    assert pairs[3:] == read_rows(extra)
