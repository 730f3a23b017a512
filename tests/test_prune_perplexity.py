"""Wanda pruning (the prune stage's activation-aware method) and held-out answer perplexity, on the real model's
2-layer cut (its tokenizer and chat template)."""
import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.data import shared_file
from posttrain.eval.perplexity import answer_items, answer_nll, perplexity
from posttrain.stage import Context
from posttrain.stages.prune import Prune, PruneConfig, magnitude_prune, wanda_prune


class OneLinear(nn.Module):
    """A model of one linear layer whose input is the token id's embedding, so the calibration text sets X."""

    def __init__(self, embedding: torch.Tensor, weight: torch.Tensor):
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(embedding)
        self.proj = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.proj.weight.data.copy_(weight)

    def get_output_embeddings(self):
        return None

    def forward(self, input_ids):
        return self.proj(self.embed(input_ids))


class Ids:
    def __call__(self, text, return_tensors=None, add_special_tokens=False):
        return type("Enc", (), {"input_ids": torch.tensor([[int(t) for t in text.split()]])})()


def test_wanda_keeps_small_weights_on_large_activations_where_magnitude_drops_them():
    # input feature 3 is 100x larger than the others in every calibration token: its small weight matters
    embedding = torch.tensor([[1.0, 1.0, 1.0, 100.0], [1.0, -1.0, 1.0, -100.0]])
    weight = torch.tensor([[1.0, 2.0, 3.0, 0.5], [3.0, 0.5, 2.0, 0.1]])
    wanda = OneLinear(embedding, weight)
    with torch.no_grad():
        tokens = wanda_prune(wanda, Ids(), ["0 1 0", "1 1"], ratio=0.5)
    assert tokens == 5
    expected = torch.tensor([[0.0, 0.0, 3.0, 0.5], [3.0, 0.0, 0.0, 0.1]])  # each row loses its own two
    assert torch.equal(wanda.proj.weight, expected)
    magnitude = OneLinear(embedding, weight)
    with torch.no_grad():
        magnitude_prune(magnitude, 0.5)
    assert magnitude.proj.weight[:, 3].tolist() == [0.0, 0.0]  # the smallest |w| go, whatever their inputs


def test_prune_stage_wanda_on_the_real_model_cut(smollm2_cut, tmp_path):
    cfg = PruneConfig(model=str(smollm2_cut), method="wanda", ratio=0.5,
                      calibration=str(shared_file("llamafactory_demo/alpaca_en_demo.json")), calibration_rows=4,
                      max_length=64)
    assert Prune().check(cfg) == []
    metrics = Prune().run(cfg, Context("prune", tmp_path, tmp_path, Prune.outputs, {}, "auto"))
    assert 4 * 16 <= metrics["calibration_tokens"] <= 4 * 64
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    q = model.model.layers[0].self_attn.q_proj.weight
    assert ((q == 0).sum(1) == q.shape[1] // 2).all()  # each output row loses its own half
    assert metrics["zero_weight_fraction"] == pytest.approx(0.5, abs=0.01)


def test_prune_stage_rejects_calibration_it_would_ignore_or_miss():
    missing = Prune().check(PruneConfig(model="m", method="wanda"))
    ignored = Prune().check(PruneConfig(model="m", method="magnitude", calibration="rows.jsonl"))
    assert [k for k, _ in missing] == ["calibration"] and "wanda" in missing[0][1]
    assert [k for k, _ in ignored] == ["calibration"] and "ignore" in ignored[0][1]


def test_answer_nll_equals_one_item_at_a_time_and_counts_only_answer_tokens(smollm2_cut):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_cut)
    model = AutoModelForCausalLM.from_pretrained(smollm2_cut).eval()
    items = answer_items("gsm8k_0shot", 3) + answer_items("mbpp", 2) + answer_items("humaneval", 2)
    batched = answer_nll(model, tokenizer, items, batch_size=4)
    for item, record in zip(items, batched):
        chat = item["prompt"] + [{"role": "assistant", "content": item["answer"]}]
        ids = tokenizer(tokenizer.apply_chat_template(chat, tokenize=False), return_tensors="pt").input_ids
        prompt = tokenizer(tokenizer.apply_chat_template(item["prompt"], tokenize=False, add_generation_prompt=True),
                           return_tensors="pt").input_ids.shape[1]
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
        assert record["id"] == item["id"] and record["tokens"] == ids.shape[1] - prompt
        assert record["nll"] == pytest.approx(float(-logp[prompt - 1:].sum()), rel=1e-4)
    last = tokenizer.apply_chat_template(items[0]["prompt"] + [{"role": "assistant", "content": items[0]["answer"]}],
                                         tokenize=False)
    assert last.rstrip().endswith(items[0]["answer"] + "<|im_end|>")  # the end of turn is among the answer's tokens
    total = sum(r["nll"] for r in batched) / sum(r["tokens"] for r in batched)
    assert perplexity(batched) == pytest.approx(math.exp(total))
    with pytest.raises(ValueError, match="reference answers"):
        answer_items("ifeval", 2)
