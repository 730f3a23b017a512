"""Render a run's report.html in headless Chromium and save a PNG screenshot, to look at: tables readable,
plots visible, nothing cut off. Needs Debian's `chromium` (apt-get install -y chromium).

    python bench/screenshot_report.py RUN_DIR [--report-dir DIR] [--out report.png] [--height 2400]
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from posttrain.eval.report import build_report

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def screenshot(html: Path, png: Path, width: int, height: int) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        sys.exit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png.resolve()}",
                        f"--window-size={width},{height}", html.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)


def main() -> None:
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
    print(f"{html} -> {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
