"""Data sources as a recipe declares them: column mappings, the one format module, a huge row's bounded cost,
paths relative to the recipe, the shared-data folder, and tokenizer coverage warnings."""
import json
import re

import pytest

from conftest import MINI_RECIPE, write_mini_files, write_recipe
from posttrain.worlds import tinyworld
from posttrain.data import DataError, ReadStats, read_rows
from posttrain.formats import clip_messages, content_budget, rename_columns, to_messages
from posttrain.recipe import RecipeError, load
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


# A recipe whose SFT stage reads one data source; the tiny model's tokenizer (characters of string.printable).
SOURCE_RECIPE = MINI_RECIPE.split("  sft:")[0] + """  sft:
    kind: sft
    model: ${stages.base.output.model}
    max_length: 160
    data:
      - SOURCE
"""


def _recipe(tmp_path, source: str, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(SOURCE_RECIPE.replace("SOURCE", source))
    return path


GSM8K = "${shared_data:gsm8k/train.jsonl}"


def test_a_column_mapping_reads_gsm8k_question_answer_as_prompt_completion(tmp_path):
    """GSM8K's real schema, mapped in the recipe instead of converted by hand."""
    from posttrain.stages.sft import mix

    recipe = load(_recipe(tmp_path, f"{{path: '{GSM8K}', count: 3, columns: {{question: prompt, answer: completion}}}}"))
    src = recipe.stages["sft"].config.data[0]
    rows, record = mix([src], Context("sft", tmp_path, tmp_path, {}), 0, "error")
    first = read_rows(src.path)
    assert record["sources"][0]["available"] == len(first) and len(rows) == 3
    pairs = {(q["question"], q["answer"]) for q in first}
    assert all((r["messages"][0]["content"], r["messages"][1]["content"]) in pairs for r in rows)


@pytest.mark.parametrize("source,says", [
    (f"{{path: '{GSM8K}'}}", "train.jsonl:1: row fits no SFT format"),
    (f"{{path: '{GSM8K}', columns: {{questoin: prompt, answer: completion}}}}",
     "train.jsonl:1: column 'questoin' named in `columns` is not in the row; it has: answer, question"),
    (f"{{path: '{GSM8K}', columns: {{question: promt, answer: completion}}}}", "did you mean 'prompt'"),
    (f"{{path: '{GSM8K}', columns: {{question: prompt, answer: prompt}}}}", "two columns are renamed to 'prompt'"),
])
def test_a_bad_column_mapping_fails_validation_with_the_line(tmp_path, source, says):
    with pytest.raises(RecipeError) as info:
        load(_recipe(tmp_path, source))
    assert says in str(info.value) and f"{tmp_path / 'recipe.yaml'}:" in str(info.value)


def test_rename_columns_refuses_to_overwrite_a_column():
    with pytest.raises(DataError, match="f:3: `columns` renames a column to 'prompt', which the row already has"):
        rename_columns({"question": "q", "prompt": "p", "answer": "a"}, {"question": "prompt"}, "f:3")
    assert to_messages(rename_columns({"q": "1+1?", "a": "2"}, {"q": "prompt", "a": "completion"}, "f:1"), "auto",
                       "f:1")[1] == {"role": "assistant", "content": "2"}


def test_relative_data_paths_are_read_from_the_recipe_folder(tmp_path, monkeypatch):
    """From any working directory; a path in a command-line override is read from the working directory."""
    (tmp_path / "project" / "data").mkdir(parents=True)
    sft, _ = write_mini_files(tmp_path / "project" / "data")
    recipe = _recipe(tmp_path / "project", "{path: data/sft.jsonl, count: 5}")
    monkeypatch.chdir(tmp_path)
    spec = load(recipe).stages["sft"]
    assert spec.config.data[0].path == str(sft) and spec.raw["data"][0]["path"] == str(sft)  # what is hashed
    assert load(recipe, ["stages.sft.data.0.path=project/data/sft.jsonl"]).stages["sft"].config.data[0].path == str(sft)
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+: stages.sft.data\[0\].path: data file not found: "
                                          r"data/sft.jsonl \(read as .*_r0/data/sft.jsonl\) \(from override"):
        load(recipe, ["stages.sft.data.0.path=data/sft.jsonl"])


def test_without_the_shared_folder_the_error_says_how_to_point_at_it(tmp_path, monkeypatch):
    """A wheel install has no checkout beside it: ${shared_data:...} says to set POSTTRAIN_SHARED_DATA (exit 2)."""
    from posttrain import data

    recipe = _recipe(tmp_path, f"{{path: '{GSM8K}', columns: {{question: prompt, answer: completion}}}}")
    shared = data.shared_data_dir()
    monkeypatch.delenv("POSTTRAIN_SHARED_DATA", raising=False)
    monkeypatch.setattr(data, "CHECKOUT_SHARED_DATA", tmp_path / "site-packages" / "shared" / "data")
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+: stages.sft.data\[0\].path: posttrain looks for the shared "
                                          r"datasets at .*site-packages/shared/data, .* set POSTTRAIN_SHARED_DATA="):
        load(recipe)
    with pytest.raises(DataError, match="set POSTTRAIN_SHARED_DATA"):
        data.shared_file("gsm8k/train.jsonl")
    monkeypatch.setenv("POSTTRAIN_SHARED_DATA", str(shared))
    assert load(recipe).stages["sft"].config.data[0].path == str(shared / "gsm8k" / "train.jsonl")


def test_validation_warns_with_counts_about_characters_the_tokenizer_cannot_represent(tmp_path):
    """The issue's figure: 27 of the first 300 GSM8K rows hold characters (£, ×, ’ ...) outside the tiny
    model's vocabulary; ASCII-only data gives no warning."""
    recipe = load(_recipe(tmp_path, f"{{path: '{GSM8K}', columns: {{question: prompt, answer: completion}}}}"))
    assert len(recipe.warnings) == 1
    assert re.search(r"recipe.yaml:\d+: stages.sft.data\[0\].path: 27 of 300 rows checked in .*train.jsonl contain "
                     r"characters the model's tokenizer maps to its unknown token \(.*'£'", recipe.warnings[0])
    sft, _ = write_mini_files(tmp_path)
    assert load(_recipe(tmp_path, f"{{path: {sft}}}", "ascii.yaml")).warnings == []


def test_coverage_of_a_local_tokenizer_folder(tmp_path):
    """A model folder's own tokenizer.json is read with `tokenizers`: its unknown token is what counts."""
    tokenizer = tinyworld.build_tokenizer()
    tokenizer.save_pretrained(tmp_path / "model")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": p, "completion": "ok"}) + "\n" for p in ["café", "plain", "naïve €"]))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nstages:\n  sft: {{kind: sft, model: {tmp_path / 'model'}, data: {rows}}}\n")
    (warning,) = load(recipe).warnings
    assert "2 of 3 rows checked" in warning and "('é' 'ï' '€')" in warning


def test_validate_prints_the_warning_and_still_passes(tmp_path, capsys):
    from posttrain.cli import main

    recipe = _recipe(tmp_path, f"{{path: '{GSM8K}', columns: {{question: prompt, answer: completion}}}}")
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr()
    warnings = [line for line in out.err.splitlines() if line.startswith(f"warning: {recipe}:")]
    assert "is valid" in out.out and len(warnings) == 1 and "27 of 300 rows" in warnings[0], out.err


def test_docs_data_md_names_every_source_key_and_column_target():
    """docs/data.md is the data reference: it must not fall behind the Source dataclass or the rename targets."""
    import dataclasses
    import typing

    from conftest import REPO
    from posttrain.formats import SFTColumn

    text = (REPO / "docs" / "data.md").read_text()
    assert all(f"| `{f.name}` |" in text for f in dataclasses.fields(Source))
    assert all(f"`{name}`" in text.split("| `columns` |")[1].splitlines()[0] for name in typing.get_args(SFTColumn))
    assert "docs/data.md" in (REPO / "README.md").read_text()


def test_a_huge_preference_row_is_cut_the_same_way(tmp_path):
    from posttrain.data import ReadStats
    from posttrain.stages.dpo import DPOStageConfig, read_pairs

    tokenizer = tinyworld.build_tokenizer()
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "2+2?", "chosen": "4 " * 100_000, "rejected": "5"}) + "\n")
    (pair,) = read_pairs(DPOStageConfig(model="unused", data=str(path), max_length=64),
                         Context("dpo", tmp_path, tmp_path, {}), tokenizer, ReadStats())
    assert [len(m["content"]) for k in ("prompt", "chosen", "rejected") for m in pair[k]] == \
        [4, content_budget(tokenizer, 64), 1]


def _prefs(tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"question": "2+2?", "good": "4", "bad": "5", "id": 7}) + "\n")
    return data


def _dpo_recipe(tmp_path, columns: str):
    return write_recipe(tmp_path, f"""
        name: dpo
        stages:
          dpo: {{kind: dpo, model: org/tiny, data: {_prefs(tmp_path)}, columns: {columns}}}
        """)


def test_a_dpo_column_mapping_reads_question_good_bad_as_a_pair(tmp_path):
    from posttrain.stages.dpo import DPOStageConfig, read_pairs

    cfg = DPOStageConfig(model="unused", data=str(_prefs(tmp_path)),
                         columns={"question": "prompt", "good": "chosen", "bad": "rejected"})
    pairs = read_pairs(cfg, Context("dpo", tmp_path, tmp_path, {}), tinyworld.build_tokenizer(), ReadStats())
    assert [(p["prompt"][0]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] \
        == [("2+2?", "4", "5")]


@pytest.mark.parametrize("columns,says", [
    ("{question: prompt, good: chosen}", "prefs.jsonl:1: "),
    ("{questoin: prompt, good: chosen, bad: rejected}", "prefs.jsonl:1: column 'questoin' named in `columns` is not in the row"),
    ("{question: prompt, good: chosen, bad: chosen}", "two columns are renamed to 'chosen'"),
    ("{question: prompt, good: chosen, bad: rejectd}", "did you mean 'rejected'"),
])
def test_a_bad_dpo_column_mapping_fails_validation_with_the_line(tmp_path, columns, says):
    with pytest.raises(RecipeError) as info:
        load(_dpo_recipe(tmp_path, columns))
    assert says in str(info.value) and f"{tmp_path / 'recipe.yaml'}:" in str(info.value)
