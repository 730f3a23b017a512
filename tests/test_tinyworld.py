import re

import torch
from transformers import AutoTokenizer

from posttrain.worlds import tinyworld as tw

ANSWER = re.compile(r"The answer is (-?\d+)\.")


def _problem(question: str, ground_truth: str) -> tuple[int, str, int]:
    a, b = map(int, re.findall(r"\d+", question)[:2])
    return (a, "+" if a + b == int(ground_truth) else "-", b)


def test_tokenizer_round_trips_and_marks_assistant_tokens(tmp_path):
    tok = tw.build_tokenizer()
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ann has 12 pens."},
            {"role": "assistant", "content": "12+3: 2+3=5. The answer is 15."}]
    text = tok.apply_chat_template(chat, tokenize=False)
    assert text.endswith("The answer is 15." + tok.eos_token)
    enc = tok.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    marked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(marked) == chat[-1]["content"] + tok.eos_token

    prompt = tok.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n") and text.startswith(prompt)

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert (loaded.eos_token, loaded.pad_token) == (tw.EOS, tw.PAD)
    assert loaded.apply_chat_template(chat, tokenize=False) == text


def test_model_is_deterministic_in_seed_and_runs():
    tok = tw.build_tokenizer()
    first, again, other = (tw.build_model(tok, seed=s, hidden_size=32, num_hidden_layers=1, intermediate_size=64)
                           for s in (1, 1, 2))
    ids = torch.tensor([tok("Q: 1+1")["input_ids"]])
    assert torch.equal(first(ids).logits, again(ids).logits)
    assert not torch.equal(first(ids).logits, other(ids).logits)
    assert first(ids).logits.shape[-1] == len(tok)


def test_some_teachers_are_sometimes_wrong():
    rows = tw.sft_candidate_rows(200, seed=0)
    right = {}
    for row in rows:
        assert ANSWER.search(row["prompt"]) is None and row["ground_truth"].lstrip("-").isdigit()
        for cand in row["candidates"]:
            right.setdefault(cand["source"], []).append(ANSWER.search(cand["response"]).group(1) == row["ground_truth"])
    rates = {source: sum(hits) / len(hits) for source, hits in right.items()}
    assert rates["tutor"] == 1.0 and rates["terse"] == 1.0
    assert 0.5 < rates["hasty"] < 0.95 and 0.3 < rates["guesser"] < 0.7


def test_generators_are_deterministic():
    for make in (tw.pretrain_rows, tw.sft_candidate_rows, tw.rl_rows):
        assert make(20, seed=3) == make(20, seed=3)
        assert make(20, seed=3) != make(20, seed=4)
    assert tw.heldout_rows(50) == tw.heldout_rows(50)
    assert tw.heldout_rows(50)[:10] == tw.heldout_rows(10)


def test_training_generators_never_emit_heldout_problems():
    heldout = tw.heldout_rows(1000)
    held = {_problem(r["prompt"][0]["content"], r["ground_truth"]) for r in heldout}
    assert len(held) == len(heldout)  # no repeats inside the held-out split
    trained = {_problem(r["prompt"], r["ground_truth"]) for r in tw.sft_candidate_rows(3000, seed=0)}
    trained |= {_problem(r["prompt"][0]["content"], r["ground_truth"]) for r in tw.rl_rows(3000, seed=1)}
    for row in tw.pretrain_rows(3000, seed=2):
        a, op, b = re.search(r"\nA: (\d+)([+-])(\d+)", row["text"]).groups()
        trained.add((int(a), op, int(b)))
    assert len(trained) > 1000 and not trained & held
