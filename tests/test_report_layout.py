"""The report's layout in a real browser: headless Chromium (Debian's `chromium` package) renders report.html
at 800 px and 1280 px; the page must not scroll sideways (wide tables scroll in their own box) and every
figure must lie within the viewport. Skipped, saying so, where Chromium is not installed."""
import json
import shutil
import sys

import pytest

from conftest import REPO
from posttrain.eval.report import build_report
from test_report import make_run

sys.path.insert(0, str(REPO / "bench"))
from screenshot_report import browser, layout  # noqa: E402

WIDTHS = [800, 1280]


ARMS = 8


def with_sft_arms(run, arms: int = ARMS):
    """The run as an ablation recipe leaves it: several SFT arms beside the demo's stages, so the hyperparameter
    table has a column each and is wider than the window (the page must still not scroll sideways)."""
    meta = json.loads((run / "run.json").read_text())
    for i in range(arms):
        name = f"sft_arm{i}"
        shutil.copytree(run / "sft", run / name)
        meta["stages"].insert(meta["stages"].index("sft") + 1, name)
    (run / "run.json").write_text(json.dumps(meta))
    return run


@pytest.mark.skipif(browser() is None, reason="needs Chromium for the layout check: apt-get install -y chromium")
def test_report_fits_800_and_1280_px_windows(tmp_path):
    html = build_report(with_sft_arms(make_run(tmp_path / "run")), tmp_path / "report")
    for width, page in layout(html, WIDTHS).items():
        assert page["innerWidth"] == width
        assert max(page["tables"]) > width, "no table is wider than the window: the check below would prove nothing"
        assert page["scrollWidth"] <= width, f"the page scrolls sideways at {width} px: {page['scrollWidth']} px wide"
        # the demo's 4 plots and a training-curve plot per arm
        assert len(page["images"]) == 4 + ARMS and all(i["complete"] and i["natural"] > 0 for i in page["images"])
        for image in page["images"]:
            assert 0 <= image["left"] and image["right"] <= width, (width, image)
