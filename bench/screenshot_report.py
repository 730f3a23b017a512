"""Render a run's report.html in headless Chromium: save a PNG screenshot to look at (tables readable, plots
visible, nothing cut off), and measure the layout at a window width (tests/test_report_layout.py: the page
never scrolls sideways, images fit the viewport). Needs Debian's `chromium` (apt-get install -y chromium).

    python bench/screenshot_report.py RUN_DIR [--report-dir DIR] [--out report.png] [--width 1280] [--height 2400]
"""
import argparse
import html as html_lib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars", "--disable-dev-shm-usage"]
# Run after the page (and its data: images) has loaded; writes what it measured into the DOM, which
# --dump-dom prints: the page's scroll width against the viewport's, each table's width and each image's box.
MEASURE = """<script>addEventListener('load', () => {
  const pre = document.createElement('pre'); pre.id = 'layout-measure';
  pre.textContent = JSON.stringify({scrollWidth: document.scrollingElement.scrollWidth, innerWidth: innerWidth,
    tables: [...document.querySelectorAll('table')].map(t => t.scrollWidth),
    images: [...document.images].map(i => ({left: i.getBoundingClientRect().left, right: i.getBoundingClientRect().right,
                                             natural: i.naturalWidth, complete: i.complete}))});
  document.body.append(pre); });</script>"""


def browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(args: list[str], url: str) -> subprocess.CompletedProcess:
    if not browser():
        sys.exit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([browser(), *FLAGS, f"--user-data-dir={profile}", *args, url],
                              check=True, capture_output=True, text=True, timeout=120)


def screenshot(html: Path, png: Path, width: int, height: int) -> None:
    _chromium([f"--screenshot={png.resolve()}", f"--window-size={width},{height}"], html.resolve().as_uri())


def layout(html: Path, widths: list[int], height: int = 900) -> dict[int, dict]:
    """The page's layout in windows of each width (px): scrollWidth, innerWidth, each table's full width and
    each image's left/right.
    One Chromium start: a copy of the page with MEASURE added (beside it, so relative links resolve as in
    the original) is loaded into one iframe per width, each its own viewport (media queries included)."""
    probe, frames = html.with_name(".layout-probe.html"), html.with_name(".layout-frames.html")
    probe.write_text(html.read_text().replace("</body>", MEASURE + "</body>"))
    frames.write_text("<!DOCTYPE html><html><body style='margin:0'>" + "".join(
        f"<iframe src='{probe.name}' width='{w}' height='{height}' style='border:0;display:block'></iframe>" for w in widths)
        + "<script>addEventListener('load', () => { const pre = document.createElement('pre'); pre.id = 'layout-all';"
          " pre.textContent = JSON.stringify([...document.querySelectorAll('iframe')].map("
          "f => JSON.parse(f.contentDocument.getElementById('layout-measure').textContent))); document.body.append(pre); });"
          "</script></body></html>")
    try:
        dom = _chromium([f"--window-size={max(widths) + 40},{height}", "--allow-file-access-from-files", "--dump-dom"],
                        frames.resolve().as_uri()).stdout
    finally:
        probe.unlink()
        frames.unlink()
    found = re.search(r'<pre id="layout-all">(.*?)</pre>', dom, re.S)
    if not found:
        raise RuntimeError(f"chromium printed no measurement for {html}: {dom[-500:]}")
    return dict(zip(widths, json.loads(html_lib.unescape(found.group(1)))))


def main() -> None:
    from posttrain.eval.report import build_report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--report-dir", type=Path, default=None, help="where to build the report (default RUN_DIR/report)")
    p.add_argument("--out", type=Path, default=Path("report.png"))
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2400)
    p.add_argument("--reference", default=None)
    args = p.parse_args()
    html = build_report(args.run_dir, args.report_dir or args.run_dir / "report", reference=args.reference)
    screenshot(html, args.out, args.width, args.height)
    measured = layout(html, [args.width])[args.width]
    print(f"{html} -> {args.out} ({args.out.stat().st_size // 1024} KB); page {measured['scrollWidth']} px wide "
          f"in a {measured['innerWidth']} px window")


if __name__ == "__main__":
    main()
