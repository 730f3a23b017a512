"""`posttrain inspect` of a DPO stage shows a preference pair, and of an RLVR stage an RL prompt, as the
trainer sees them: after the model's chat template, completions in [brackets], what the reward reads; of an
SFT stage, whether the example's target passes the verifier its row names."""
import json

import pytest

from conftest import write_mini_files, write_recipe
from posttrain import hf
from posttrain.cli import main
from posttrain.formats import sft_row
from posttrain.worlds import tinyworld

RECIPE = """
name: look
stages:
  dpo: {kind: dpo, model: MODEL, data: PREFS, max_length: 60}
  rlvr: {kind: rlvr, model: MODEL, data: RL, num_generations: 4, max_completion_length: 24}
  sft_right: {kind: sft, model: MODEL, data: SFTDIR/right.jsonl, max_length: 200}
  sft_wrong: {kind: sft, model: MODEL, data: SFTDIR/wrong.jsonl, max_length: 64}
  sft_plain: {kind: sft, model: MODEL, data: SFTDIR/plain.jsonl, max_length: 200}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    tokenizer = tinyworld.build_tokenizer()
    hf.save_model(tinyworld.build_model(tokenizer, seed=0, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=64), tokenizer, root / "model")
    _, prefs = write_mini_files(root)
    rl = root / "rl.jsonl"
    rl.write_text("".join(json.dumps(r) + "\n" for r in tinyworld.rl_rows(5, seed=0)))
    # one arithmetic prompt of the tiny world's SFT candidates, answered by a teacher that is right and one that is not
    row = tinyworld.sft_candidate_rows(1, seed=0, mix={"arith": 1.0})[0]
    by_source = {c["source"]: c for c in row["candidates"]}
    for name, source in (("right", "tutor"), ("wrong", "guesser")):
        (root / f"{name}.jsonl").write_text(json.dumps(sft_row(row, by_source[source], row["id"])) + "\n")
    (root / "plain.jsonl").write_text(json.dumps({"prompt": row["prompt"], "completion": "The answer is 5."}) + "\n")
    text = (RECIPE.replace("MODEL", str(root / "model")).replace("PREFS", str(prefs)).replace("RL", str(rl))
            .replace("SFTDIR", str(root)))
    return write_recipe(root, text), prefs, rl


def test_inspect_shows_a_dpo_pair_as_the_trainer_sees_it(recipe, capsys):
    path, prefs, _ = recipe
    assert main(["inspect", str(path), "--stage", "dpo", "--index", "1"]) == 0
    out = capsys.readouterr().out
    row = json.loads(prefs.read_text().splitlines()[1])
    assert out.startswith("pair 1: prompt ") and "max_length 60" in out
    assert "--- chosen:" in out and "--- rejected:" in out and "<|assistant|>" in out
    assert "[" + row["chosen"][:6] in out and "[" + row["rejected"][:6] in out, out
    assert "cut to" in out  # the tutor's worked answer does not fit 60 tokens with its prompt


def test_inspect_shows_an_rl_prompt_and_what_its_reward_reads(recipe, capsys):
    path, _, rl = recipe
    assert main(["inspect", str(path), "--stage", "rlvr"]) == 0
    out = capsys.readouterr().out
    row = json.loads(rl.read_text().splitlines()[0])
    assert out.startswith("prompt 0: ") and "4 completions of at most 24 tokens" in out
    assert out.split("\n")[1].startswith("<|user|>") and "<|assistant|>" in out
    assert f"verifier={row['verifier']!r}" in out and "ground_truth=" in out
    assert main(["inspect", str(path), "--stage", "rlvr", "--index", "99"]) == 2


def test_inspect_says_whether_an_sft_target_verifies(recipe, capsys):
    """The first example of the tiny world's SFT data was a wrong answer, and inspect showed it as any other."""
    path = recipe[0]
    first_lines = {}
    for stage in ("sft_right", "sft_wrong", "sft_plain"):
        assert main(["inspect", str(path), "--stage", stage]) == 0
        first_lines[stage] = capsys.readouterr().out.splitlines()[0]
    assert first_lines["sft_right"].endswith("target verifies: yes (verifier numeric: correct: 121 (answer_is))")
    wrong = first_lines["sft_wrong"]
    assert "target verifies: no (verifier numeric: " in wrong and "122" in wrong, wrong
    assert wrong.endswith("; the trainer sees it cut at max_length)")  # max_length 64 cuts the example
    assert first_lines["sft_plain"].endswith("target not checked: its row names no verifier"), first_lines
