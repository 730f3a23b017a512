"""The README's stage reference is generated from the code and must not drift from it."""
from conftest import REPO
from posttrain.cli import stage_reference


def test_stage_reference_is_current():
    text = (REPO / "docs" / "stages.md").read_text()
    assert text == stage_reference() + "\n", "docs/stages.md is stale: posttrain keys > docs/stages.md"
