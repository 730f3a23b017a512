"""The reward_model stage, a reward model as an rlvr reward term (weighted, gated by the verifier), and LoRA
in rlvr, on the tiny model: the RM learns pairs it has not seen, and both stages resume exactly."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from posttrain.schema import build
from posttrain.stage import STAGES
from posttrain.worlds import tinyworld
from test_training import run_stage, tiny_model_dir  # noqa: F401 - the fixture, shared

TRAIN = {"learning_rate": 3e-3, "max_steps": 8, "per_device_train_batch_size": 8, "save_steps": 2, "logging_steps": 1}


def pairs(n: int, seed: int) -> list[dict]:
    """A correct answer with its working (tutor) over a wrong one without (guesser, where it is wrong)."""
    rows = []
    for r in tinyworld.sft_candidate_rows(n, seed=seed, mix={"arith": 1.0}):  # the tutor and the guesser
        by = {c["source"]: c["response"] for c in r["candidates"]}
        if f"The answer is {r['ground_truth']}." not in by["guesser"]:
            rows.append({"prompt": r["prompt"], "chosen": by["tutor"], "rejected": by["guesser"]})
    return rows


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def rm_run(tiny_model_dir, tmp_path_factory):  # noqa: F811
    """One uninterrupted reward_model run (8 steps, checkpoints every 2) on its own folder."""
    root = tmp_path_factory.mktemp("rm")
    raw = {"model": str(tiny_model_dir), "data": str(write_rows(root / "prefs.jsonl", pairs(160, seed=5))),
           "max_length": 160, "train": TRAIN}
    metrics, ctx = run_stage("reward_model", raw, root)
    return raw, metrics, ctx


def scores(model_dir, prompts, completions):
    from posttrain.stages.rlvr.reward_terms import RewardModelScorer

    chats = [[{"role": "assistant", "content": c}] for c in completions]
    return RewardModelScorer(str(model_dir), batch_size=4)([[{"role": "user", "content": p}] for p in prompts], chats)


def test_reward_model_learns_to_rank_held_out_pairs(rm_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, metrics, ctx = rm_run
    assert metrics["global_step"] == 8 and metrics["final_loss"] < metrics["first_loss"] - 0.2, metrics
    out = ctx.output("model")
    model = AutoModelForSequenceClassification.from_pretrained(out)  # plain transformers loads it
    assert model.config.num_labels == 1 and AutoTokenizer.from_pretrained(out).chat_template
    held_out = pairs(40, seed=99)
    prompts = [r["prompt"] for r in held_out]
    chosen, rejected = scores(out, prompts, [r["chosen"] for r in held_out]), scores(out, prompts, [r["rejected"] for r in held_out])
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(held_out)
    assert len(held_out) >= 10 and accuracy > 0.8, accuracy


def test_reward_model_resumes_exactly(rm_run, tmp_path):
    """Stopped after checkpoint 6 (checkpoint 8 and the export gone): the resumed run exports the same weights."""
    raw, _, ctx = rm_run
    stopped = tmp_path / "reward_model"
    shutil.copytree(ctx.out_dir, stopped)
    shutil.rmtree(stopped / "checkpoints" / "checkpoint-8")
    shutil.rmtree(stopped / "model")
    metrics, resumed = run_stage("reward_model", raw, tmp_path)
    straight = load_file(ctx.output("model") / "model.safetensors")
    again = load_file(resumed.output("model") / "model.safetensors")
    assert again.keys() == straight.keys() and all(torch.equal(again[k], straight[k]) for k in straight)
    steps = [r["step"] for r in map(json.loads, (stopped / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(set(steps)) and metrics["global_step"] == 8


def rlvr_config(raw: dict):
    problems = []
    cfg = build(STAGES["rlvr"].Config, raw, "rlvr", problems, lambda s, o: "no refs in these tests")
    return cfg, problems + STAGES["rlvr"]().check(cfg)


def test_a_model_term_needs_a_reward_model(tiny_model_dir, tmp_path):  # noqa: F811
    data = write_rows(tmp_path / "rl.jsonl", tinyworld.rl_rows(4, seed=1))
    for rewards, key, message in [
            ([{"name": "model"}], "rewards[0].model", "a `model` term needs `model`"),
            ([{"name": "model", "model": str(tiny_model_dir)}], "rewards[0].model", "is not a sequence classifier"),
            ([{"name": "numeric", "model": str(tiny_model_dir)}], "rewards[0].model", "only a term named `model`"),
            ([{"name": "numeric", "gate": "verifier"}], "rewards[0].gate", "'verifier' names no term")]:
        _, problems = rlvr_config({"model": str(tiny_model_dir), "data": str(data), "rewards": rewards})
        assert any(k == key and message in m for k, m in problems), problems


def test_gated_model_term_scores_only_verified_answers(rm_run, tmp_path):
    """Tülu 3's 'verifier, else zero' with the RM ranking the verified answers; the verifier runs once a batch."""
    from posttrain.stages.rlvr.stage import reward_functions

    out = rm_run[2].output("model")
    cfg, problems = rlvr_config({"model": str(out), "data": str(write_rows(tmp_path / "rl.jsonl", [])), "rewards": [
        {"name": "model", "model": str(out), "weight": 0.5, "gate": "verifier"}, {"name": "verifier"}]})
    assert not problems, problems
    (model, verifier), weights = reward_functions(cfg, stop_ids=[0])
    assert (model.__name__, verifier.__name__, weights) == ("model", "verifier", [0.5, 1.0])
    prompts = [[{"role": "user", "content": "What is 12+30?"}]] * 2
    completions = [[{"role": "assistant", "content": c}] for c in ("12+30: 2+0=2; 1+3+0=4. The answer is 42.",
                                                                   "12+30=52. The answer is 52.")]
    row_json = [json.dumps({"ground_truth": "42", "verifier": "numeric"})] * 2
    gated = model(prompts=prompts, completions=completions, row_json=row_json)
    raw = scores(out, ["What is 12+30?"] * 2, [c[0]["content"] for c in completions])
    assert gated[0] == pytest.approx(raw[0], abs=1e-5) and gated[0] != 0 and gated[1] == 0.0
    assert verifier(prompts=prompts, completions=completions, row_json=row_json) == [1.0, 0.0]


def test_grpo_logs_the_reward_model_and_verifier_terms(rm_run, tiny_model_dir, tmp_path):  # noqa: F811
    out = rm_run[2].output("model")
    data = write_rows(tmp_path / "rl.jsonl", tinyworld.rl_rows(16, seed=2))
    _, ctx = run_stage("rlvr", {
        "model": str(tiny_model_dir), "data": str(data), "num_generations": 4, "max_completion_length": 16,
        "rewards": [{"name": "model", "model": str(out), "weight": 0.5}, {"name": "verifier"}],
        "train": {"learning_rate": 1e-3, "max_steps": 2, "per_device_train_batch_size": 8, "logging_steps": 1}}, tmp_path)
    logged = [r for r in map(json.loads, (ctx.out_dir / "metrics.jsonl").read_text().splitlines()) if "reward" in r]
    assert len(logged) == 2
    for r in logged:  # each term its own series; the total is the weighted sum
        assert r["rewards/model/mean"] != 0 and "rewards/verifier/mean" in r
        assert r["reward"] == pytest.approx(0.5 * r["rewards/model/mean"] + r["rewards/verifier/mean"], abs=1e-4)


def test_lora_rlvr_exports_merged_weights_and_resumes_exactly(tiny_model_dir, tmp_path):  # noqa: F811
    data = write_rows(tmp_path / "rl.jsonl", tinyworld.rl_rows(32, seed=3))
    raw = {"model": str(tiny_model_dir), "data": str(data), "num_generations": 4, "max_completion_length": 16,
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0},  # a random model is never right: reward length, which varies
           "rewards": [{"name": "length", "options": {"budget_chars": 4, "zero_at_chars": 40}}],
           "train": {"learning_rate": 5e-2, "max_steps": 4, "per_device_train_batch_size": 8, "save_steps": 2}}
    _, straight = run_stage("rlvr", raw, tmp_path / "straight")
    stopped = tmp_path / "stopped"
    shutil.copytree(straight.out_dir, stopped / "rlvr")
    shutil.rmtree(stopped / "rlvr" / "checkpoints" / "checkpoint-4")
    shutil.rmtree(stopped / "rlvr" / "model")
    _, resumed = run_stage("rlvr", raw, stopped)
    assert not (straight.output("model") / "adapter_config.json").exists()
    a, b = (load_file(c.output("model") / "model.safetensors") for c in (straight, resumed))
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(a[k], base[k]) for k in base)  # the adapter trained and was merged
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


RM_TAIL = """
  rm:
    kind: reward_model
    model: ${stages.base.output.model}
    data: PREF_DATA
    max_length: 160
  rlvr:
    kind: rlvr
    model: ${stages.sft.output.model}
    data: ${stages.data.output.rl}
    rewards:
      - {name: model, model: 'RM_REF', weight: 0.5, gate: verifier}
      - {name: verifier}
"""


def test_the_graph_orders_and_fingerprints_the_reward_model_before_rlvr(tmp_path):
    from conftest import MINI_RECIPE, write_mini_files
    from posttrain.recipe import RecipeError, load
    from posttrain.runner import plan
    from posttrain.store import RunStore

    sft, prefs = write_mini_files(tmp_path)

    def recipe(ref: str):
        path = tmp_path / "r.yaml"
        path.write_text(MINI_RECIPE.replace("SFT_DATA", str(sft)) + RM_TAIL.replace("PREF_DATA", str(prefs)).replace("RM_REF", ref))
        return path

    path = recipe("${stages.rm.output.model}")
    assert load(path).stages["rlvr"].deps == ["data", "rm", "sft"]
    fingerprints = lambda *o: {s.name: s.fingerprint for s in plan(load(path, list(o)), RunStore(tmp_path / "run"))}  # noqa: E731
    before, after = fingerprints(), fingerprints("stages.rm.train.learning_rate=0.001")
    assert list(before).index("rm") < list(before).index("rlvr")
    assert [n for n in before if before[n] != after[n]] == ["rm", "rlvr"]
    for ref, message in [("${stages.sft.output.model}", "stage 'sft' (sft) outputs a causal LM, not a reward model"),
                         ("${stages.data.output.rl}", "dataset")]:
        with pytest.raises(RecipeError) as info:
            load(recipe(ref))
        assert any("stages.rlvr.rewards[0].model" in p and message in p for p in info.value.problems), info.value.problems


def test_lora_reward_model_merges_adapters_and_its_trained_head(rm_run, tiny_model_dir, tmp_path):  # noqa: F811
    raw = {**rm_run[0], "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "train": {**TRAIN, "max_steps": 3}}
    metrics, ctx = run_stage("reward_model", raw, tmp_path)
    assert not (ctx.output("model") / "adapter_config.json").exists()
    merged, base = load_file(ctx.output("model") / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert "score.weight" in merged and "lm_head.weight" not in merged
    assert any(not torch.equal(merged[k], base[k]) for k in base if k in merged)  # adapters merged into the body
    assert metrics["final_loss"] < metrics["first_loss"]  # the score head trained (LoRA alone starts it random)


def test_the_reward_model_loads_whole_under_a_zero3_config(rm_run):
    """Under ZeRO-3 the trainer's config makes from_pretrained partition weights; the RM, run forward outside
    DeepSpeed's engine, must load whole on each rank (a partitioned one would score with 0-sized weights)."""
    pytest.importorskip("deepspeed")
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    from posttrain.stages.rlvr.reward_terms import RewardModelScorer

    live = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})  # noqa: F841
    try:
        assert is_deepspeed_zero3_enabled()
        scorer = RewardModelScorer(str(rm_run[2].output("model")), batch_size=2)
        got = scorer([[{"role": "user", "content": "1+1?"}]], [[{"role": "assistant", "content": "2"}]])
        assert is_deepspeed_zero3_enabled() and not any(hasattr(p, "ds_id") for p in scorer.model.parameters())
        assert got == scores(rm_run[2].output("model"), ["1+1?"], ["2"])
    finally:
        unset_hf_deepspeed_config()


def test_reward_model_checks_its_rows_and_columns_as_dpo_does(tiny_model_dir, tmp_path):  # noqa: F811
    data = write_rows(tmp_path / "p.jsonl", [{"question": "q", "good": "a", "bad": "b"}])
    for columns, key, message in [(None, "data", "a preference row needs `chosen` and `rejected`"),
                                  ({"good": "chosen", "bad": "chosen"}, "columns", "two columns are renamed to 'chosen'")]:
        problems = []
        cfg = build(STAGES["reward_model"].Config, {"model": str(tiny_model_dir), "data": str(data), "columns": columns},
                    "reward_model", problems, lambda s, o: "no refs")
        assert any(k == key and message in m for k, m in STAGES["reward_model"]().check(cfg)), problems
    cfg.columns = {"question": "prompt", "good": "chosen", "bad": "rejected"}
    assert STAGES["reward_model"]().check(cfg) == []
