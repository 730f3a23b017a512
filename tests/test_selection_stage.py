"""The select and prune stages end to end on the tiny world: config checks, every method, audit and summary
files, pruned models that reload."""
import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain import hf, schema
from posttrain.worlds import tinyworld
from posttrain.data import read_rows, shared_file, write_rows
from posttrain.stage import Context
from posttrain.selection import scoring as select_scoring
from posttrain.stages.prune import Prune, PruneConfig
from posttrain.stages.select import Select, SelectConfig


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> str:
    tok = tinyworld.build_tokenizer()
    path = tmp_path_factory.mktemp("models") / "base"
    hf.save_model(tinyworld.build_model(tok, seed=0), tok, path)
    return str(path)


@pytest.fixture(scope="module")
def candidate_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "candidates.jsonl"
    write_rows(path, tinyworld.sft_candidate_rows(12, seed=3, mix={"arith": 1.0}))
    return str(path)


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> str:
    """Messages rows: the tutor's answer to tiny-world prompts."""
    rows = [{"id": r["id"], "messages": [{"role": "user", "content": r["prompt"]},
                                         {"role": "assistant", "content": r["candidates"][3]["response"]}],
             "quality": float(i % 5)} for i, r in enumerate(tinyworld.sft_candidate_rows(40, seed=4, mix={"arith": 1.0}))]
    path = tmp_path_factory.mktemp("data") / "sft.jsonl"
    write_rows(path, rows)
    return str(path)


def config(**raw) -> SelectConfig:
    problems: list = []
    cfg = schema.build(SelectConfig, raw, "", problems, lambda s, o: "no refs here")
    assert problems == []
    return cfg


def problems_of(**raw) -> list[str]:
    return [key for key, _ in Select().check(config(**raw))]


def run(cfg: SelectConfig, out: Path, resume: str = "auto") -> tuple[list[dict], list[dict], dict]:
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context("select", out, out.parent, Select.outputs, {}, resume)
    Select().run(cfg, ctx)
    return (read_rows(out / "data.jsonl"), read_rows(out / "audit.jsonl"), json.loads((out / "summary.json").read_text()))


# ---------- checks ----------

def test_check_budget_and_required_keys(sft_file, candidate_file, base_model, tmp_path):
    assert problems_of(data=sft_file, method="random", budget={"count": 3, "fraction": 0.5}) == ["budget"]
    assert problems_of(data=sft_file, method="random") == ["budget"]
    assert problems_of(data=candidate_file, method="grape", model=base_model, budget={"count": 3}) == ["budget"]
    assert problems_of(data=candidate_file, method="grape") == ["model"]
    assert problems_of(data=candidate_file, method="single_source") == ["grape.source"]
    assert problems_of(data=sft_file, method="random", budget={"count": 2}, model=base_model, rank="lowest") == ["model", "rank"]
    assert problems_of(data=candidate_file, method="grape", model=base_model,
                       scoring={"template": "{response} after {instruction}"}) == ["scoring.template"]
    assert problems_of(data=sft_file, method="length", budget={"fraction": 0.1}) == []


def test_check_paser_vocabulary_mismatch(sft_file, base_model, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"vocab_size": 50}))
    assert problems_of(data=sft_file, method="paser", model=base_model, budget={"count": 3}) == ["paser.reference_model"]
    assert problems_of(data=sft_file, method="paser", model=base_model, budget={"count": 3},
                       paser={"reference_model": str(other)}) == ["paser.reference_model"]
    assert problems_of(data=sft_file, method="paser", model=base_model, budget={"count": 3},
                       paser={"reference_model": base_model}) == []


def test_check_vllm_backend(sft_file, candidate_file, base_model):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    problems = Select().check(config(data=candidate_file, method="grape", model=base_model, scoring={"backend": "vllm"}))
    assert [key for key, _ in problems] == ["scoring.backend"] and "not installed" in problems[0][1]
    assert problems_of(data=sft_file, method="paser", model=base_model, budget={"count": 3},
                       paser={"reference_model": base_model}, scoring={"backend": "vllm"}) == ["scoring.backend"]


def test_check_launcher_splits_only_transformers_log_prob_scoring(sft_file, candidate_file, base_model):
    two = {"type": "torchrun", "num_processes": 2}
    assert problems_of(data=candidate_file, method="grape", model=base_model, launcher=two) == []
    assert problems_of(data=sft_file, method="paser", model=base_model, budget={"count": 3},
                       paser={"reference_model": base_model}, launcher=two) == ["launcher.type"]
    assert problems_of(data=candidate_file, method="grape", model=base_model, launcher={**two, "deepspeed": "zero3"}) \
        == ["launcher.deepspeed"]
    assert problems_of(data=candidate_file, method="grape", model=base_model, launcher={"num_processes": 2}) \
        == ["launcher.type"]


# ---------- GRAPE family ----------

def test_grape_keeps_the_best_scored_candidate_and_resumes(candidate_file, base_model, tmp_path, monkeypatch):
    cfg = config(data=candidate_file, method="grape", model=base_model, scoring={"chunk_rows": 5})
    rows, audit, summary = run(cfg, tmp_path / "grape")
    assert len(rows) == len(audit) == 12
    for row, record in zip(rows, audit):
        best = max(range(4), key=lambda j: (round(record["scores"][j], 6), -j))
        assert record["chosen"] == [best] and row["source"] == record["sources"][best]
        assert row["messages"][0]["role"] == "user" and row["messages"][1]["role"] == "assistant"
        assert row["id"] == record["id"] and "ground_truth" in row and "candidates" not in row
    assert sum(s["kept"] for s in summary["sources"].values()) == 12
    assert all(s["candidates"] == 12 for s in summary["sources"].values())
    assert summary["budget"] is None and summary["kept_rows"] == 12

    def no_scoring(*args, **kwargs):
        raise AssertionError("resume must reuse the checkpointed scores")
    monkeypatch.setattr("posttrain.selection.scoring.mean_log_probs", no_scoring)
    again, _, _ = run(cfg, tmp_path / "grape")
    assert again == rows


def test_grape_killed_mid_scoring_writes_no_outputs_and_resumes(candidate_file, base_model, tmp_path, monkeypatch):
    cfg = config(data=candidate_file, method="grape", model=base_model, scoring={"chunk_rows": 5})
    whole_rows, whole_audit, _ = run(cfg, tmp_path / "whole")
    real, scored = select_scoring.mean_log_probs, []

    def scoring(kill_at):
        def score(model, encoded, *args):
            scored.append(len(encoded))
            if len(scored) == kill_at:
                raise KeyboardInterrupt
            return real(model, encoded, *args)
        return score
    monkeypatch.setattr(select_scoring, "mean_log_probs", scoring(kill_at=2))  # killed in the second chunk of 5 prompts
    out = tmp_path / "killed"
    assert Select().progress(cfg, out) is None
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out)
    assert [p.name for p in out.iterdir()] == ["scores.jsonl"]  # no half-written data or audit file
    assert Select().progress(cfg, out) == "5 rows scored"  # the runner resumes rather than starting over
    scored.clear()
    monkeypatch.setattr(select_scoring, "mean_log_probs", scoring(kill_at=0))
    rows, audit, _ = run(cfg, out)
    assert sum(scored) == (12 - 5) * 4  # the first chunk's scores were read back
    assert rows == whole_rows and audit == whole_audit


class FakeLLM:
    """vllm.LLM's prompt-logprob interface, computed with transformers: per prompt position the logprob of
    the actual token given the ones before it, None at position 0."""
    prompts = 0

    def __init__(self, model: str, revision: str | None = None):
        self.model = AutoModelForCausalLM.from_pretrained(model, revision=revision, dtype=torch.float32).eval()

    def generate(self, prompts, params, use_tqdm=True):
        assert params.max_tokens == 1 and params.prompt_logprobs == 0
        FakeLLM.prompts += len(prompts)
        outputs = []
        for prompt in prompts:
            ids = prompt["prompt_token_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
            outputs.append(SimpleNamespace(prompt_logprobs=[None] + [
                {t: SimpleNamespace(logprob=logp[p - 1, t].item())} for p, t in enumerate(ids) if p]))
        return outputs


def install_fake_vllm(monkeypatch) -> None:
    vllm = types.ModuleType("vllm")
    vllm.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # find_spec sees it as installed
    vllm.LLM, vllm.SamplingParams = FakeLLM, SimpleNamespace
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.setattr(FakeLLM, "prompts", 0)


def test_grape_on_vllm_prompt_logprobs_matches_transformers(candidate_file, base_model, tmp_path, monkeypatch):
    hf_rows, hf_audit, _ = run(config(data=candidate_file, method="grape", model=base_model), tmp_path / "hf")
    install_fake_vllm(monkeypatch)
    raw = {"data": candidate_file, "method": "grape", "model": base_model, "scoring": {"backend": "vllm"}}
    assert problems_of(**raw) == []
    rows, audit, _ = run(config(**raw), tmp_path / "vllm")
    assert FakeLLM.prompts == 12 * 4  # every candidate went through vLLM
    for ours, reference in zip(audit, hf_audit):
        assert ours["scores"] == pytest.approx(reference["scores"], abs=1e-5)
        assert ours["chosen"] == reference["chosen"]
    assert rows == hf_rows


def test_reverse_random_and_single_source(candidate_file, base_model, tmp_path):
    _, best, _ = run(config(data=candidate_file, method="grape", model=base_model, grape={"top_k": 2}), tmp_path / "g2")
    _, worst, _ = run(config(data=candidate_file, method="grape_reverse", model=base_model), tmp_path / "rev")
    for b, w in zip(best, worst):
        assert w["chosen"][0] not in b["chosen"]  # 4 candidates: the bottom one is never in the top 2
    drawn = [run(config(data=candidate_file, method="random_response", seed=s), tmp_path / f"rr{s}")[1] for s in (1, 1, 2)]
    assert [a["chosen"] for a in drawn[0]] == [a["chosen"] for a in drawn[1]]
    assert [a["chosen"] for a in drawn[0]] != [a["chosen"] for a in drawn[2]]
    rows, _, summary = run(config(data=candidate_file, method="single_source", grape={"source": "tutor"}), tmp_path / "ss")
    assert {r["source"] for r in rows} == {"tutor"} and summary["sources"]["tutor"]["kept"] == 12


# ---------- filters through the stage ----------

def test_decontamination_and_dedup_drop_and_report(sft_file, tmp_path):
    rows = read_rows(sft_file)[:10]
    question = json.loads(shared_file("gsm8k/test.jsonl").read_text().splitlines()[3])["question"]
    planted = {"id": "planted", "instruction": question, "output": "The answer is 5."}
    duplicate = {**rows[2], "id": "copy"}
    path = tmp_path / "train.jsonl"
    write_rows(path, rows[:5] + [planted] + rows[5:] + [duplicate])
    cfg = config(data=str(path), method="length", budget={"count": 100},
                 decontaminate={"tasks": ["gsm8k_8shot", {"name": "mbpp", "label": "mbpp_test"}]}, dedup={})
    kept, audit, summary = run(cfg, tmp_path / "out")
    by_id = {a["id"]: a for a in audit}
    assert by_id["planted"]["filter"] == "decontaminate" and by_id["planted"]["eval_sets"] == ["gsm8k_8shot"]
    assert by_id["copy"]["filter"] == "dedup" and by_id["copy"]["duplicate_of"] == 2
    per_set = summary["decontamination"]["per_eval_set"]
    assert per_set["gsm8k_8shot"]["matched_rows"] == 1 and per_set["gsm8k_8shot"]["examples"] == ["planted"]
    assert per_set["mbpp_test"]["matched_rows"] == 0 and per_set["mbpp_test"]["items"] == 974
    assert summary["dedup"]["dropped"] == 1 and summary["filtered_rows"] == 2
    assert [r["id"] for r in kept] == [r["id"] for r in rows]


# ---------- baselines ----------

def test_length_keeps_the_longest_and_records_ranks(sft_file, tmp_path):
    rows, audit, summary = run(config(data=sft_file, method="length", budget={"fraction": 0.25}), tmp_path / "len")
    lengths = sorted((len(r["messages"][1]["content"]) for r in read_rows(sft_file)), reverse=True)
    assert len(rows) == 10 == summary["budget"]["resolved"]
    assert min(len(r["messages"][1]["content"]) for r in rows) >= lengths[9]
    assert sorted(a["rank"] for a in audit) == list(range(40))


@pytest.mark.parametrize("method", ["random", "length"])
def test_subset_methods_stream_the_rows_instead_of_holding_them(tmp_path, method):
    """2,000 rows of 20 KB (40 MB of text): the selection holds decisions, not rows, so its peak is far below
    the data it reads."""
    import tracemalloc

    path = tmp_path / "big.jsonl"
    write_rows(path, ({"prompt": f"question {i}", "completion": "x" * (20_000 + i)} for i in range(2000)))
    tracemalloc.start()
    try:
        rows, _, _ = run(config(data=str(path), method=method, budget={"count": 10}), tmp_path / method)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(rows) == 10 and peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MB"


def test_perplexity_and_ifd_rank_by_model_scores(sft_file, base_model, tmp_path):
    rows, audit, _ = run(config(data=sft_file, method="perplexity", model=base_model, budget={"count": 5}), tmp_path / "ppl")
    ppl = [a["scores"]["perplexity"] for a in audit]
    assert sorted(a["scores"]["perplexity"] for a in audit if a["kept"]) == sorted(ppl)[:5]
    assert all(p == pytest.approx(np.exp(-a["scores"]["mean_logprob"])) for p, a in zip(ppl, audit))
    _, audit, _ = run(config(data=sft_file, method="ifd", model=base_model, budget={"count": 5}), tmp_path / "ifd")
    for a in audit:
        s = a["scores"]
        assert s["ifd"] == pytest.approx(s["logprob_given_question"] / s["logprob_alone"])
        assert not (a["kept"] and s["ifd"] > 1)
        assert (a["reason"] == "ifd > 1") == (s["ifd"] > 1)


def test_dsir_prefers_rows_like_the_target(sft_file, tmp_path):
    target = tmp_path / "target.jsonl"
    write_rows(target, [{"text": "How many marbles are left after giving some away?"}] * 5)
    rows, _, _ = run(config(data=sft_file, method="dsir", dsir={"target": str(target)}, budget={"count": 8}), tmp_path / "dsir")
    share = np.mean(["marbles" in r["messages"][0]["content"] for r in rows])
    base = np.mean(["marbles" in r["messages"][0]["content"] for r in read_rows(sft_file)])
    assert share > base


def test_qurating_samples_towards_high_scores(sft_file, tmp_path):
    rows, audit, _ = run(config(data=sft_file, method="qurating", qurating={"score_key": "quality", "temperature": 0.25},
                                budget={"count": 8}), tmp_path / "qr")
    assert np.mean([r["quality"] for r in rows]) > np.mean([r["quality"] for r in read_rows(sft_file)])
    assert sorted(a["rank"] for a in audit if a["kept"]) == list(range(8))


# ---------- PASER and prune ----------

def prune(base: str, out: Path, method: str, ratio: float):
    out.mkdir(parents=True, exist_ok=True)
    metrics = Prune().run(PruneConfig(model=base, method=method, ratio=ratio),
                          Context("prune", out, out, Prune.outputs, {}, "auto"))
    return metrics, AutoModelForCausalLM.from_pretrained(out / "model")


def test_paser_selects_at_most_the_budget_from_a_pruned_model(sft_file, base_model, tmp_path):
    out = tmp_path / "prune"
    prune(base_model, out, "magnitude", 0.5)
    cfg = config(data=sft_file, method="paser", model=str(out / "model"), budget={"fraction": 0.25},
                 paser={"reference_model": base_model, "max_clusters": 6})
    rows, audit, summary = run(cfg, tmp_path / "paser")
    p, table = summary["paser"], summary["paser"]["clusters"]
    assert (p["graph"], p["jsd"], p["budget_split"], p["refill"]) == ("dense", "instruction_sum", "floor", False)
    assert p["k_chosen_by"] == "nmf_error" and set(p["nmf_errors"]) == {str(k) for k in range(1, 8)}
    assert p["unallocated"] == 10 - sum(t["budget"] for t in table) < len(table)  # floors: under one row each
    assert p["budget_shortfall"] == 10 - len(rows) == 10 - sum(t["selected"] for t in table)
    assert {a["cluster"] for a in audit} == {t["cluster"] for t in table}
    assert all(a["scores"]["jsd"] > 0 for a in audit)
    for t in table:
        members = [a["scores"]["jsd"] for a in audit if a["cluster"] == t["cluster"]]
        assert t["degradation"] == pytest.approx(np.mean(members)) and t["size"] == len(members)


def test_paser_earlier_variant_fills_exactly_the_budget(sft_file, base_model, tmp_path):
    out = tmp_path / "prune"
    prune(base_model, out, "magnitude", 0.5)
    cfg = config(data=sft_file, method="paser", model=str(out / "model"), budget={"fraction": 0.25},
                 paser={"reference_model": base_model, "max_clusters": 6, "k_rule": "eigengap", "graph": "landmark",
                        "jsd": "response_mean", "budget_split": "largest_remainder", "refill": True})
    rows, audit, summary = run(cfg, tmp_path / "paser")
    p = summary["paser"]
    assert (p["graph"], p["k_chosen_by"], p["unallocated"], p["budget_shortfall"], len(rows)) == (
        "landmark", "eigengap", 0, 0, 10)


def test_check_paser_options_used_together(sft_file, base_model):
    base = dict(data=sft_file, method="paser", model=base_model, budget={"count": 3})
    paser = lambda **o: problems_of(**base, paser={"reference_model": base_model, **o})  # noqa: E731
    assert paser(k_rule="fixed") == ["paser.clusters"]
    assert paser(clusters=10) == ["paser.clusters"]  # k_rule nmf_error: K is not given
    assert paser(k_rule="fixed", clusters=10) == []
    assert paser(k_rule="fixed", clusters=10, max_clusters=12) == ["paser.max_clusters"]
    assert paser(graph="dense", landmarks=50, dense_max_rows=10) == ["paser.dense_max_rows", "paser.landmarks"]
    assert paser(graph="landmark", landmarks=50, neighbors=3) == []
    assert paser(ccg=False, concepts_per_sample=5) == ["paser.concepts_per_sample"]


def test_magnitude_zeroes_the_smallest_weights_per_layer(base_model, tmp_path):
    metrics, model = prune(base_model, tmp_path, "magnitude", 0.3)
    original = AutoModelForCausalLM.from_pretrained(base_model)
    layer, before = model.model.layers[0].mlp.up_proj.weight, original.model.layers[0].mlp.up_proj.weight
    zero = layer == 0
    assert zero.float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert before[zero].abs().max() <= before[~zero].abs().min()  # the pruned ones were the smallest
    assert torch.equal(model.model.embed_tokens.weight, original.model.embed_tokens.weight)
    assert metrics["zero_weight_fraction"] == pytest.approx(0.3, abs=0.01)
    assert metrics["parameters_after"] == metrics["parameters_before"]


def test_structured_removes_mlp_channels_and_reloads(base_model, tmp_path):
    metrics, model = prune(base_model, tmp_path, "structured", 0.25)
    assert model.config.intermediate_size == metrics["intermediate_size"] == 192  # 256 * 0.75
    assert model.model.layers[1].mlp.down_proj.weight.shape[1] == 192
    assert metrics["parameters_after"] < metrics["parameters_before"]
    out = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert out.shape[-1] == model.config.vocab_size and torch.isfinite(out).all()


def test_bad_rows_skipped_are_counted(sft_file, tmp_path):
    dirty = tmp_path / "dirty.jsonl"
    dirty.write_text(Path(sft_file).read_text() + "{not json\n")
    rows, _, summary = run(config(data=str(dirty), method="random", budget={"count": 5}, on_bad_rows="skip"), tmp_path / "r")
    assert len(rows) == 5 and summary["skipped_bad_rows"] == 1 and summary["input_rows"] == 40
