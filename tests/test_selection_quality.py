"""The select stage says what its kept SFT data is (selection/quality.py): per skill and per teacher, how many
kept responses pass the verifier their row names; the report shows the mixture and those shares."""
import json

from posttrain import schema
from posttrain.data import read_rows, write_rows
from posttrain.eval.report_data import selection_blocks
from posttrain.rewards import get_verifier
from posttrain.stage import Context
from posttrain.stages.select import Select, SelectConfig
from posttrain.worlds import tinyworld


def run_select(tmp_path, **raw) -> dict:
    problems: list = []
    cfg = schema.build(SelectConfig, raw, "", problems, lambda s, o: "no refs here")
    assert problems == []
    out = tmp_path / "select"
    out.mkdir()
    Select().run(cfg, Context("select", out, tmp_path, Select.outputs, {}, "auto"))
    return json.loads((out / "summary.json").read_text())


def test_kept_responses_are_verified_per_skill_and_teacher(tmp_path):
    rows = tinyworld.sft_candidate_rows(40, seed=5, mix={"arith": 0.5, "format": 0.5})
    path = tmp_path / "candidates.jsonl"
    write_rows(path, rows)
    summary = run_select(tmp_path, data=str(path), method="random_response", seed=1)
    kept = read_rows(tmp_path / "select" / "data.jsonl")
    by_id = {r["id"]: r for r in rows}
    # the same counts, computed here from the kept rows with each row's own verifier
    expected: dict = {}
    for k in kept:
        row = by_id[k["id"]]
        ok = get_verifier(row["verifier"])(k["messages"][-1]["content"], row).score == 1.0
        for axis, name in (("skills", row["skill"]), ("sources", k["source"])):
            entry = expected.setdefault(axis, {}).setdefault(name, {"kept": 0, "verified": 0})
            entry["kept"] += 1
            entry["verified"] += ok
    assert summary["skills"] == expected["skills"] and summary["verify_failed"] == 0
    assert {s: {k: v[k] for k in ("kept", "verified")} for s, v in summary["sources"].items()} == expected["sources"]
    assert summary["sources"]["careful"]["verified"] == summary["sources"]["careful"]["kept"] > 0  # always right
    assert summary["sources"]["guesser"]["verified"] < summary["sources"]["guesser"]["kept"]  # often wrong

    text = json.dumps([b.__dict__ for b in selection_blocks("select", summary, tmp_path / "plots")], default=str)
    assert "kept that verify" in text and "The SFT mixture by skill" in text
