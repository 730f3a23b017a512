"""Data sources as a recipe declares them: column mappings, the one format module, a huge row's bounded cost,
paths relative to the recipe, the shared-data folder, and tokenizer coverage warnings."""
import json

import pytest

from conftest import MINI_RECIPE, write_mini_files
from posttrain import tinyworld
from posttrain.data import DataError
from posttrain.formats import clip_messages, content_budget, rename_columns, to_messages
from posttrain.stage import Context
from posttrain.stages.sft import SFTStageConfig, Source, _clipped_mix, _count_truncated


def test_a_huge_row_is_cut_to_what_max_length_can_reach_and_trains_the_same_tokens(tmp_path):
    """Issue 18: one 300 KB row must cost what max_length costs. Each message is cut to a budget set by
    max_length and the longest token, not by the row; the first max_length tokens are those of the whole row."""
    tokenizer = tinyworld.build_tokenizer()
    huge = "12 + 30 = 42. " * 20_000
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "2+2?", "completion": "4"}) + "\n"
                    + json.dumps({"prompt": "Add them up.", "completion": huge}) + "\n")
    cfg = SFTStageConfig(model="unused", data=str(path), max_length=64)
    rows, _ = _clipped_mix(cfg, Context("sft", tmp_path, tmp_path, {}), tokenizer)
    budget = content_budget(tokenizer, 64)
    assert budget < 5_000 < len(huge)
    lengths = sorted(len(m["content"]) for r in rows for m in r["messages"])
    assert lengths[-1] == budget and lengths[:-1] == [1, 4, 12]  # only the huge message is cut
    clipped = next(r["messages"] for r in rows if len(r["messages"][1]["content"]) == budget)
    whole = [{"role": "user", "content": "Add them up."}, {"role": "assistant", "content": huge}]
    ids = lambda msgs: tokenizer.apply_chat_template(msgs, return_dict=True)["input_ids"][:64]  # noqa: E731
    assert ids(clipped) == ids(whole)
    assert _count_truncated(rows, tokenizer, 64) == 1  # still reported as truncated


def test_clipping_keeps_short_messages_whole():
    msgs = [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "x" * 10}]
    assert clip_messages(msgs, 3) == [msgs[0], {"role": "assistant", "content": "xxx"}]
    assert clip_messages(msgs, 10) == msgs
