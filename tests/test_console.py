"""Quiet output: the live progress line read from a stage's log, the one-line metric headline, and
`posttrain status` kept to one line per stage at 80 columns."""
import json

from posttrain.cli import main
from posttrain.progress import headline, parse_progress, progress_text

# What TRL's SFT trainer wrote into a stage.log (a real excerpt, cut): a checkpoint's one-shard bar comes
# after the training bar and must not hide it.
SFT_LOG = (
    " 58%|#####8    | 7/12 [00:00<00:00, 28.17it/s] 67%|######6   | 8/12 [00:00<00:00, 30.87it/s]"
    "                                              {'loss': '3.74', 'grad_norm': '0.9172', 'epoch': '0.32'}\n"
    "Writing model shards:   0%|          | 0/1 [00:00<?, ?it/s]"
    "Writing model shards: 100%|##########| 1/1 [00:00<00:00, 714.05it/s]\n"
)


def test_progress_comes_from_the_newest_training_bar_and_loss():
    assert parse_progress(SFT_LOG) == (8, 12, 3.74)
    assert parse_progress("generate: 40%|####  | 12/29 [00:31<00:44, 2.6s/batch]") == (12, 29, None)
    assert parse_progress("Loading weights") == (None, None, None)
    assert progress_text("sft", 8, 12, 3.74) == "[sft] 8/12 loss 3.74"


def test_headline_folds_first_and_final_values():
    metrics = {"global_step": 150, "first_loss": 4.2611, "final_loss": 0.51234, "rows": 3000,
               "first_reward": 0.25, "final_reward": 0.5, "nested": {"skipped": 1}}
    assert headline(metrics) == "150 steps loss 4.261→0.5123 reward 0.25→0.5 rows=3000"


def _manifest(stage, kind, status, metrics, error=None):
    return {"stage": stage, "kind": kind, "status": status, "fingerprint": "0123456789abcdef" + stage,
            "wall_time_s": 754.2, "metrics": metrics, "error": error}


def test_status_is_one_line_per_stage_at_80_columns(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    many = {f"tinyworld/exact_match_{m}": 0.123456 for m in ("base", "sft", "dpo", "rlvr")}
    stages = {"pretrain_base": _manifest("base", "pretrain", "complete",
                                         {"global_step": 700, "first_loss": 4.1, "final_loss": 1.2, **many}),
              "dpo": _manifest("dpo", "dpo", "failed", {}, error="DataError: " + "a very long reason " * 8),
              "eval": None}
    for name, m in stages.items():
        (tmp_path / name).mkdir()
        if m:
            (tmp_path / name / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "run.json").write_text(json.dumps({"recipe": "tiny", "stages": list(stages)}))
    assert main(["status", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 80, "\n".join(lines)
    rows = {name: [line for line in lines if line.lstrip().startswith(name)] for name in stages}
    assert all(len(found) == 1 for found in rows.values()), lines
    assert "complete" in rows["pretrain_base"][0] and "12m34s" in rows["pretrain_base"][0]
    assert "700 steps loss 4.1→1.2" in rows["pretrain_base"][0]
    assert "failed" in rows["dpo"][0] and "DataError" in rows["dpo"][0] and "not run" in rows["eval"][0]


def test_eval_scores_are_shown_in_percent_as_in_the_report():
    metrics = {"base/tinyworld": 0.005, "rlvr/tinyworld_code": 0.765, "reused_results": 2}
    assert headline(metrics, "eval") == "base/tinyworld=0.5% rlvr/tinyworld_code=76.5% reused_results=2"
    assert headline({"rows": 0.5}, "sft") == "rows=0.5"
