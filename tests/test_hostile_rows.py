"""Data shapes each stage kind would train on wrongly (issue 26): every one is refused at validation, naming the
file and line, and again when the stage reads all its rows; a data error found at run time exits 2."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_mini_chain
from posttrain import hf
from posttrain.cli import main
from posttrain.data import DataError
from posttrain.formats import to_preference
from posttrain.recipe import RecipeError, load
from posttrain.rewards.numeric import ground_truth
from posttrain.stage import Context
from posttrain.stages.sft import Source, mix

GOOD_RL = {"prompt": "2+2?", "ground_truth": "4", "verifier": "numeric"}
HI = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return write_mini_chain(tmp_path_factory.mktemp("rows"))


def _rows(path, rows, good=None, at=3):
    """A jsonl file of good rows with the bad ones from line `at` on."""
    good = good or []
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in good[:at - 1] + rows + good[at - 1:]]
    path.write_text("\n".join(lines) + "\n")
    return path


def validation_problem(recipe, overrides) -> str:
    with pytest.raises(RecipeError) as info:
        load(recipe, overrides)
    [p] = info.value.problems
    return p


# -- RLVR (items 3, 10, 11) ---------------------------------------------------------------------------------------
RL_ROWS = [
    ("blank lines only", None, "no rows (only blank lines)"),
    ("no ground_truth", {"prompt": "2+2?", "verifier": "numeric"}, "needs 'ground_truth'"),
    ("unknown verifier", {**GOOD_RL, "verifier": "numerc"}, "names no verifier (did you mean 'numeric'?)"),
    ("numeric prompt", {**GOOD_RL, "prompt": 5}, "a prompt is a non-empty string"),
    ("empty prompt", {**GOOD_RL, "prompt": ""}, "a prompt is a non-empty string"),
    ("two numbers", {**GOOD_RL, "ground_truth": "5 apples and 7 pears"}, "holds 2 numbers"),
    ("a list", {**GOOD_RL, "ground_truth": [3, 5]}, "is a list"),
    ("no verifier column", {"prompt": "2+2?", "ground_truth": "4"}, "missing column `verifier`"),
    ("ifeval without ids", {**GOOD_RL, "verifier": "ifeval"}, "ifeval row needs"),
]


@pytest.mark.parametrize("name,row,says", RL_ROWS, ids=[r[0] for r in RL_ROWS])
def test_rl_rows_are_read_at_validation(chain, tmp_path, name, row, says):
    path = tmp_path / "rl.jsonl"
    if row is None:
        path.write_text("\n\n  \n")
    else:
        _rows(path, [row], [GOOD_RL] * 2)
    p = validation_problem(chain, [f"stages.rlvr.data={path}"])
    assert "stages.rlvr.data:" in p and says in p and (row is None or f"{path}:3:" in p), p


def test_a_text_file_named_parquet_fails_validation(chain, tmp_path):
    path = tmp_path / "rl.parquet"
    path.write_text(json.dumps(GOOD_RL) + "\n")
    assert "not a readable Parquet file" in validation_problem(chain, [f"stages.rlvr.data={path}"])


def test_rlvr_reads_every_row_before_training(tmp_path):
    """Past the 20 rows validation reads, and a file of blank lines: errors before any model loads."""
    from posttrain.stages.rlvr.stage import RLVRConfig, _rows as rl_rows

    cfg = RLVRConfig(model="org/model", data=str(tmp_path / "rl.jsonl"))
    ctx = Context("rlvr", tmp_path, tmp_path, {})
    _rows(tmp_path / "rl.jsonl", [{**GOOD_RL, "ground_truth": "x"}], [GOOD_RL] * 30, at=26)
    with pytest.raises(DataError, match=f"rl.jsonl:26: .*is not a number"):
        rl_rows(cfg, ctx)
    (tmp_path / "rl.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no usable rows"):
        rl_rows(cfg, ctx)


@pytest.mark.parametrize("truth", ["18", "-3.5", "3/4", "1,234", "$1,000.50", "18 dollars", 7, 3.5])
def test_one_number_ground_truths_still_read(truth):
    assert ground_truth({"ground_truth": truth}) is not None


# -- generate, pretrain, select (item 11) ------------------------------------------------------------------------
def test_generate_prompts_are_read_at_validation(tmp_path):
    rows = _rows(tmp_path / "p.jsonl", [{"prompt": "2+2?", "verifier": "numeric"}], [GOOD_RL] * 2)
    recipe = tmp_path / "g.yaml"
    recipe.write_text(f"name: g\nstages:\n  gen: {{kind: generate, model: org/model, prompts: {rows}}}\n")
    assert f"{rows}:3: " in validation_problem(recipe, []) and "ground_truth" in validation_problem(recipe, [])


def test_pretrain_rows_are_read_at_validation_and_at_run_time_exit_2(chain, tmp_path, capsys):
    good = [{"text": "some text"}] * 30
    early = _rows(tmp_path / "early.jsonl", [{"txt": "typo"}], good)
    assert f"{early}:3: a pretraining row needs `text`" in validation_problem(chain, [f"stages.base.data={early}"])
    late = _rows(tmp_path / "late.jsonl", [{"text": 5}], good, at=25)  # past what validation reads
    out = tmp_path / "run"
    assert main(["run", str(chain), "--only", "base", f"stages.base.data={late}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{late}:25: a pretraining row needs `text`" in err and "KeyError" not in err


def test_select_rows_are_read_at_validation(tmp_path):
    rows = _rows(tmp_path / "c.jsonl", [{"prompt": "p", "candidates": [{"response": "r"}]}],
                 [{"prompt": "p", "candidates": [{"source": "a", "response": "r"}]}] * 2)
    recipe = tmp_path / "s.yaml"
    recipe.write_text(f"name: s\nstages:\n  pick: {{kind: select, method: random_response, data: {rows}}}\n")
    assert f"{rows}:3: candidates[0] must be" in validation_problem(recipe, [])


# -- SFT roles (item 5) -------------------------------------------------------------------------------------------
ROLES = {"tool": [HI[0], {"role": "tool", "content": "42"}, HI[1]], "human": [{"role": "human", "content": "q"}, HI[1]],
         "User": [{"role": "User", "content": "q"}, HI[1]], "developer": [{"role": "developer", "content": "be brief"}, *HI],
         "Assistant": [HI[0], {"role": "Assistant", "content": "a"}, *HI]}


@pytest.mark.parametrize("role", sorted(ROLES))
def test_roles_the_template_drops_are_errors_at_validation(chain, tmp_path, role):
    rows = _rows(tmp_path / "sft.jsonl", [{"messages": ROLES[role]}], [{"messages": HI}] * 2)
    p = validation_problem(chain, [f"stages.sft.data={rows}", "stages.sft.chat_template=tulu"])
    assert f"{rows}:3: the chat template drops '{role}' turns" in p, p
    load(chain, [f"stages.sft.data={rows}", "stages.sft.chat_template=chatml"])  # chatml renders any role


def test_roles_the_models_own_template_drops_are_errors_before_training(tmp_path):
    from posttrain.worlds.tinyworld import build_tokenizer

    rows = _rows(tmp_path / "sft.jsonl", [{"messages": ROLES["human"]}], [{"messages": HI}] * 2)
    with pytest.raises(DataError, match=f"sft.jsonl:3: the chat template drops 'human' turns"):
        mix([Source(path=str(rows))], Context("sft", tmp_path, tmp_path, {}), 0, "error",
            turns=hf.TurnCheck.of_tokenizer(build_tokenizer()))


# -- DPO pairs (items 6, 12) ---------------------------------------------------------------------------------------
PAIRS = [
    ("conversation vs string", {"prompt": "q", "chosen": [*HI, {"role": "user", "content": "more"},
                                                          {"role": "assistant", "content": "ok"}], "rejected": "no"},
     "`chosen` holds a 'user' turn"),
    ("identical", {"prompt": "q", "chosen": "same", "rejected": "same"}, "are the same answer"),
    ("a number", {"prompt": "q", "chosen": 5, "rejected": "r"}, "`chosen` must be a string"),
    ("no content", {"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "r"}, "`chosen` must be a string"),
    ("empty list", {"prompt": "q", "chosen": [], "rejected": "r"}, "`chosen` must be a string"),
]


@pytest.mark.parametrize("name,row,says", PAIRS, ids=[p[0] for p in PAIRS])
def test_pairs_of_the_wrong_shape_are_errors(chain, tmp_path, name, row, says):
    with pytest.raises(DataError, match=says):
        to_preference(row, "f:1")
    rows = _rows(tmp_path / "prefs.jsonl", [row], [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 2)
    assert f"{rows}:3: " in validation_problem(chain, [f"stages.dpo.data={rows}"])


def test_dpo_counts_truncated_pairs():
    from posttrain.stages.dpo import count_truncated
    from posttrain.worlds.tinyworld import build_tokenizer

    tokenizer = build_tokenizer()
    short = {"prompt": [HI[0]], "chosen": [HI[1]], "rejected": [{"role": "assistant", "content": "hey"}]}
    long = {**short, "rejected": [{"role": "assistant", "content": "word " * 200}]}
    assert count_truncated([short, long, short], tokenizer, 64) == 1


# -- the fuzz: any value in any column of a row is a row, or an error naming the file and line --------------------
VALUES = st.one_of(st.none(), st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=2),
                   st.just([{"role": "assistant"}]), st.just([{"role": "user", "content": "x"}]), st.just(HI))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=VALUES, chosen=VALUES, rejected=VALUES)
def test_fuzz_preference_rows_are_pairs_or_named_errors(prompt, chosen, rejected):
    row = {k: v for k, v in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)) if v is not None}
    try:
        pair = to_preference(row, "f:7")
    except DataError as e:
        assert str(e).startswith("f:7: ")
        return
    assert all(m["role"] == "assistant" for side in ("chosen", "rejected") for m in pair[side])
    assert pair["chosen"] != pair["rejected"] and all(isinstance(m["content"], str) for m in pair["prompt"])
