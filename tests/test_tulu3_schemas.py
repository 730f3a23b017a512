"""The Tülu 3 mixtures' real schemas (fixtures written from their dataset cards): the SFT mixture's
id/messages/source rows, and the 8B preference mixture's `prompt` string with chosen/rejected as whole
conversations. In both, only assistant tokens are trained; a DPO pair never repeats the user turn."""
import copy
import json
from pathlib import Path

import pytest

from posttrain import hf
from posttrain.worlds import tinyworld
from posttrain.data import DataError
from posttrain.formats import to_messages, to_preference

FIXTURES = Path(__file__).parent / "fixtures"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def tok():
    return tinyworld.build_tokenizer()  # the tulu chat template, assistant turns in {% generation %}


def test_preference_mixture_pairs_train_the_assistant_completion_only(tok, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    raw = rows("tulu3_preference_mixture.jsonl")
    pairs = [to_preference(r, f"row {i}") for i, r in enumerate(raw)]
    for r, p in zip(raw, pairs):
        assert p["prompt"] == [{"role": "user", "content": r["prompt"]}]
        assert p["chosen"] == r["chosen"][-1:] and p["rejected"] == r["rejected"][-1:]
    model = tinyworld.build_model(tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=2, intermediate_size=64)
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_length=256, max_steps=1)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(pairs),
                         processing_class=tok)
    for r, ex in zip(raw, trainer.train_dataset):
        # chosen_ids are the tokens DPO scores (and trains) after the prompt: the assistant reply and its end only
        for side in ("chosen", "rejected"):
            trained = tok.decode(ex[f"{side}_ids"])
            assert trained.strip() == r[side][-1]["content"] + tok.eos_token, trained
            assert r["prompt"] not in trained


def test_preference_prompt_that_disagrees_with_the_conversation_is_an_error():
    row = rows("tulu3_preference_mixture.jsonl")[0]
    with pytest.raises(DataError, match="row 7: `prompt` is not the end"):
        to_preference({**row, "prompt": "Something else"}, "row 7")


def test_sft_mixture_rows_train_every_assistant_turn_and_nothing_else(tok):
    for i, row in enumerate(rows("tulu3_sft_mixture.jsonl")):
        messages = to_messages(row, "auto", f"row {i}")
        assert messages == row["messages"]
        enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        trained = tok.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m])
        assert trained == "".join(m["content"] + tok.eos_token for m in messages if m["role"] == "assistant")
