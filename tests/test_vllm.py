"""The vLLM paths against a stand-in `vllm` module (tests/fake_vllm: vLLM itself needs a GPU) that records
each engine's constructor arguments and every prompt. The model is tiny, but with a 131,072-token context and
a tokenizer that adds a BOS while its chat template writes one too, as Llama 3.1's do. Checked: engines are
sized from the stage's lengths, eval builds one engine per model and frees it before the next, prompts are the
HF path's token ids (one BOS), RLVR's colocated engine gets its length, and server mode says how to start one."""
import json
import socket
import sys
from pathlib import Path

import pytest

import posttrain.stages  # noqa: F401  (registers the stage kinds)
from posttrain import hf
from posttrain.worlds import tinyworld
from posttrain.data import DataError
from posttrain.eval.generation import generate
from posttrain.eval.suite import TaskRun, evaluate_model
from posttrain.schema import build
from posttrain.stage import STAGES, Context

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64)
BOS = "<|begin_of_text|>"


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fake_vllm"))
    import vllm

    vllm.reset()
    yield vllm
    sys.modules.pop("vllm", None)


@pytest.fixture
def grpo():
    """TRL's GRPO modules, imported before the stand-in is on sys.path: TRL reads vLLM's version at import."""
    import trl.trainer.grpo_trainer  # noqa: F401


@pytest.fixture(scope="module")
def llama_like(tmp_path_factory) -> Path:
    from tokenizers import processors

    tok = tinyworld.build_tokenizer()
    tok.add_special_tokens({"bos_token": BOS})
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.bos_token_id)])
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    path = tmp_path_factory.mktemp("llama_like") / "model"
    hf.save_model(tinyworld.build_model(tok, max_position_embeddings=131072, **TINY), tok, path)
    return path


@pytest.fixture
def hf_prompt_ids(monkeypatch):
    """The token ids the HF path's model.generate receives, unpadded, in call order."""
    from transformers import LlamaForCausalLM

    seen, real = [], LlamaForCausalLM.generate

    def recording(self, input_ids, attention_mask, **kwargs):
        seen.extend(ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask))
        return real(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "generate", recording)
    return seen


def test_eval_gives_vllm_the_hf_token_ids_with_one_sized_engine_per_model(llama_like, fake_vllm, hf_prompt_ids, tmp_path):
    runs = [TaskRun(name="tinyworld", label="short", limit=3, shots=None, chat=True, max_new_tokens=4),
            TaskRun(name="tinyworld", label="long", limit=5, shots=None, chat=True, max_new_tokens=12)]
    evaluate_model(str(llama_like), "m", runs, tmp_path / "hf", backend="hf", batch_size=8, seed=0, log=lambda m: None)
    for label in ("a", "b"):  # two models of one eval stage
        evaluate_model(str(llama_like), label, runs, tmp_path / "vllm", backend="vllm", batch_size=8, seed=0,
                       log=lambda m: None)
    sent = [p["prompt_token_ids"] for p in fake_vllm.PROMPTS]
    assert len(sent) == 16 and sorted(sent[:8]) == sorted(hf_prompt_ids) and sent[:8] == sent[8:]
    bos = hf.load_tokenizer(str(llama_like)).bos_token_id
    assert all(ids[0] == bos and ids.count(bos) == 1 for ids in sent)  # the template's BOS, not a second one
    needed = max(max(map(len, hf_prompt_ids[:3])) + 4, max(map(len, hf_prompt_ids[3:])) + 12)
    assert [(e["model"], e["max_model_len"], e["alive_before"]) for e in fake_vllm.ENGINES] == \
        [(str(llama_like), needed, 0)] * 2  # one per model, each freed before the next was built
    assert not fake_vllm.LIVE
    records = [json.loads(line) for line in (tmp_path / "vllm" / "samples" / "a" / "long.jsonl").read_text().splitlines()]
    assert len(records) == 5 and all(r["prompt_text"].startswith(BOS) for r in records)


def test_generate_with_a_path_sizes_an_engine_for_the_call_and_frees_it(llama_like, fake_vllm, hf_prompt_ids):
    prompts = [r["prompt"] for r in tinyworld.heldout_rows(4)]
    generate(str(llama_like), None, prompts, max_new_tokens=6, backend="hf")
    out = generate(str(llama_like), None, prompts, max_new_tokens=6, temperature=0.7, n=3, backend="vllm")
    sent = [p["prompt_token_ids"] for p in fake_vllm.PROMPTS]
    assert sorted(sent) == sorted(hf_prompt_ids)
    assert [e["max_model_len"] for e in fake_vllm.ENGINES] == [max(map(len, sent)) + 6] and not fake_vllm.LIVE
    tok = hf.load_tokenizer(str(llama_like))
    # The stand-in answers the prompt's last 5 tokens reversed, then a stop id: cut there and decoded as HF's are.
    assert [o[0] for o in out] == [tok.decode(list(reversed(ids))[:5], skip_special_tokens=True) for ids in sent]
    assert all(len(o) == 3 for o in out)


def _rlvr(llama_like: Path, tmp_path: Path, vllm: dict, monkeypatch):
    """The RLVR stage up to its trainer, which records the TRL config it is given instead of training."""
    import trl

    data = tmp_path / "rl.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in tinyworld.rl_rows(6, 0)))
    raw = {"model": str(llama_like), "data": str(data), "max_completion_length": 24, "num_generations": 2,
           "vllm": vllm, "train": {"per_device_train_batch_size": 2, "max_steps": 1}}
    problems = []
    cfg = build(STAGES["rlvr"].Config, raw, "rlvr", problems, None)
    assert not problems and not STAGES["rlvr"]().check(cfg), problems

    class Recorded(Exception):
        pass

    def recording_trainer(args, **kwargs):
        raise Recorded(args)

    monkeypatch.setattr(trl, "GRPOTrainer", recording_trainer)
    (tmp_path / "rlvr").mkdir()
    ctx = Context("rlvr", tmp_path / "rlvr", tmp_path, STAGES["rlvr"].outputs)
    with pytest.raises(Recorded) as recorded:
        STAGES["rlvr"]().run(cfg, ctx)
    return recorded.value.args[0], data


def test_rlvr_colocate_sizes_the_engine_from_its_prompts_and_completion_length(llama_like, grpo, fake_vllm, tmp_path, monkeypatch):
    args, data = _rlvr(llama_like, tmp_path, {"mode": "colocate", "gpu_memory_utilization": 0.25}, monkeypatch)
    tok = hf.load_tokenizer(str(llama_like))
    texts = [tok.apply_chat_template(json.loads(line)["prompt"], tokenize=False, add_generation_prompt=True)
             for line in data.read_text().splitlines()]
    longest = max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert (args.vllm_mode, args.vllm_gpu_memory_utilization, args.vllm_max_model_length) == ("colocate", 0.25, longest + 24)


def test_rlvr_with_vllm_corrects_the_logprob_mismatch_by_default_and_the_recipe_can_tune_it(llama_like, grpo, fake_vllm,
                                                                                           tmp_path, monkeypatch):
    args, _ = _rlvr(llama_like, tmp_path, {"mode": "colocate"}, monkeypatch)
    assert (args.vllm_importance_sampling_correction, args.vllm_importance_sampling_mode,
            args.vllm_importance_sampling_clip_max, args.vllm_importance_sampling_clip_min) == (True, "sequence_mask", 3.0, None)
    (tmp_path / "tuned").mkdir(), (tmp_path / "off").mkdir()
    tuned = {"enabled": True, "mode": "token_truncate", "clip_max": 2.0, "clip_min": 0.5}
    args, _ = _rlvr(llama_like, tmp_path / "tuned", {"mode": "colocate", "importance_sampling": tuned}, monkeypatch)
    assert (args.vllm_importance_sampling_mode, args.vllm_importance_sampling_clip_max,
            args.vllm_importance_sampling_clip_min) == ("token_truncate", 2.0, 0.5)
    args, _ = _rlvr(llama_like, tmp_path / "off", {"mode": "colocate", "importance_sampling": {"enabled": False}}, monkeypatch)
    assert args.vllm_importance_sampling_correction is False


def test_importance_sampling_settings_trl_would_reject_are_validation_problems(fake_vllm, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in tinyworld.rl_rows(2, 0)))
    raw = {"model": "x", "data": str(rows), "num_generations": 2, "train": {"per_device_train_batch_size": 2}}

    def problems(importance_sampling: dict, **extra) -> list:
        found = []
        cfg = build(STAGES["rlvr"].Config, {**raw, **extra, "vllm": {"mode": "colocate", "importance_sampling": importance_sampling}},
                    "rlvr", found, None)
        return [p[0] for p in found or STAGES["rlvr"]().check(cfg)]

    assert problems({"mode": "token_mask", "clip_max": None}) == []
    assert problems({"mode": "token_truncate", "clip_max": None}) == ["vllm.importance_sampling.clip_max"]
    assert problems({"clip_min": 3.0, "clip_max": 2.0}) == ["vllm.importance_sampling.clip_min"]
    assert problems({}, loss_type="vespo") == ["vllm.importance_sampling.mode"]
    assert problems({"mode": "sequence"}) == ["rlvr.vllm.importance_sampling.mode"]


def test_rlvr_server_mode_without_a_server_says_how_to_start_one(llama_like, grpo, fake_vllm, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(DataError) as error:
        _rlvr(llama_like, tmp_path, {"mode": "server", "server_port": port}, monkeypatch)
    message = str(error.value)
    assert f"no vLLM server answers at http://127.0.0.1:{port}" in message
    assert f"trl vllm-serve --model {llama_like} --max_model_len " in message and f"--port {port}" in message


def test_a_vllm_backend_without_vllm_is_a_validation_problem_for_eval_generate_and_rlvr(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in tinyworld.rl_rows(2, 0)))
    configs = {"eval": {"models": {"m": "x"}, "tasks": [{"name": "tinyworld"}], "backend": "vllm"},
               "generate": {"model": "x", "prompts": str(rows), "backend": "vllm"},
               "rlvr": {"model": "x", "data": str(rows), "num_generations": 2, "vllm": {"mode": "colocate"},
                        "train": {"per_device_train_batch_size": 2}}}
    for kind, raw in configs.items():
        problems = []
        cfg = build(STAGES[kind].Config, raw, kind, problems, None)
        found = [p for p in STAGES[kind]().check(cfg) if "needs vLLM" in p[1]]
        assert not problems and len(found) == 1, (kind, STAGES[kind]().check(cfg))
