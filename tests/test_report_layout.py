"""The report's layout in a real browser: headless Chromium (Debian's `chromium` package) renders report.html
at 800 px and 1280 px; the page must not scroll sideways (wide tables scroll in their own box) and every
figure must lie within the viewport. Skipped, saying so, where Chromium is not installed."""
import sys

import pytest

from conftest import REPO
from posttrain.eval.report import build_report
from test_report import make_run

sys.path.insert(0, str(REPO / "bench"))
from screenshot_report import browser, layout  # noqa: E402

WIDTHS = [800, 1280]


@pytest.mark.skipif(browser() is None, reason="needs Chromium for the layout check: apt-get install -y chromium")
def test_report_fits_800_and_1280_px_windows(tmp_path):
    html = build_report(make_run(tmp_path / "run"), tmp_path / "report")
    for width, page in layout(html, WIDTHS).items():
        assert page["innerWidth"] == width
        assert page["scrollWidth"] <= width, f"the page scrolls sideways at {width} px: {page['scrollWidth']} px wide"
        assert len(page["images"]) == 4 and all(i["complete"] and i["natural"] > 0 for i in page["images"])
        for image in page["images"]:
            assert 0 <= image["left"] and image["right"] <= width, (width, image)
