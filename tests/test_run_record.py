"""run.json and each stage manifest record how the run was called (command line, overrides) and which
posttrain made it (version, git commit); the report's provenance section shows them."""
import json
import subprocess
from pathlib import Path

from conftest import write_recipe
from posttrain.cli import main
from posttrain.eval.report import build_report

RECIPE = "name: rec\nstages:\n  data: {kind: tinyworld, pretrain_rows: 20, sft_rows: 20, rl_rows: 20}\n"


def test_run_json_and_report_record_the_command_overrides_and_commit(tmp_path, capsys):
    recipe = write_recipe(tmp_path, RECIPE)
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "stages.data.seed=3", "--out", str(run_dir)]) == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert info["overrides"] == ["stages.data.seed=3"]
    assert info["command_line"] == f"posttrain run {recipe} stages.data.seed=3 --out {run_dir}"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert info["posttrain"]["version"] and info["posttrain"]["git_commit"] == head.stdout.strip()
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    assert manifest["command_line"] == info["command_line"] and manifest["overrides"] == ["stages.data.seed=3"]

    # a second run with other overrides: the cached stage was made by the first command, and the report says so
    assert main(["run", str(recipe), "stages.data.seed=3", "--out", str(run_dir), "--force", "--only", "data"]) == 0
    assert main(["run", str(recipe), "stages.data.seed=3", "--out", str(run_dir)]) == 0
    data_manifest = run_dir / "data" / "manifest.json"
    m = json.loads(data_manifest.read_text())
    data_manifest.write_text(json.dumps({**m, "command_line": "posttrain run old.yaml"}))
    text = (build_report(run_dir, tmp_path / "report").parent / "report.md").read_text()
    assert f"Last run: `posttrain run {recipe} stages.data.seed=3 --out {run_dir}`" in text
    assert "overrides: `stages.data.seed=3`" in text and info["posttrain"]["git_commit"][:12] in text
    assert "Stages made by an earlier command: data by `posttrain run old.yaml`" in text
