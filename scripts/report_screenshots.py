"""Screenshots of gradtune's HTML reports in headless Chromium, and a check that no table cell
holding "±" wraps onto a second line.

Usage::

    python scripts/report_screenshots.py gradtune-demo-report/report.html --out screenshots

For each REPORT.html it writes ``<out>/<parent>-<stem>.png`` (a --width x --height window,
long enough for a whole report) and prints how many "mean ± std" cells the browser laid
out on more than one line. Exit status 1 when any did, 2 when Chromium is missing.

The wrap check runs in the browser: a copy of the report gets a small script that
compares each such cell's height with the height of one line of its text, writes the
count into the page, and Chromium's ``--dump-dom`` returns it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")

_CHECK = """<script>
window.addEventListener('load', () => {
  let wrapped = 0, cells = 0;
  for (const td of document.querySelectorAll('td')) {
    if (!td.textContent.includes('\\u00b1')) continue;
    cells += 1;
    const range = document.createRange();
    range.selectNodeContents(td);
    if (range.getClientRects().length > 1) wrapped += 1;  // one rectangle per laid-out line
  }
  const out = document.createElement('pre');
  out.id = 'wrap-check';
  out.textContent = `cells=${cells} wrapped=${wrapped}`;
  document.body.appendChild(out);
});
</script>"""


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _run(browser: str, args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           *args], capture_output=True, text=True, timeout=timeout, check=False)


def wrap_check(browser: str, report: Path, width: int) -> tuple[int, int]:
    """(cells holding '±', of them laid out on more than one line) at window width ``width``."""
    page = report.read_text(encoding="utf-8").replace("</body>", _CHECK + "</body>", 1)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / report.name
        copy.write_text(page, encoding="utf-8")
        res = _run(browser, [f"--window-size={width},1000", "--virtual-time-budget=5000", "--dump-dom",
                             copy.as_uri()])
    m = re.search(r"cells=(\d+) wrapped=(\d+)", res.stdout)
    if m is None:
        raise RuntimeError(f"the wrap check did not run in {browser}: {res.stderr.strip()[-300:]}")
    return int(m.group(1)), int(m.group(2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path, metavar="REPORT.html")
    ap.add_argument("--out", type=Path, required=True, help="folder for the PNG screenshots")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=7000)
    args = ap.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print(f"no headless browser found (looked for {', '.join(BROWSERS)}); install Chromium", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    bad = 0
    for report in args.reports:
        if not report.is_file():
            print(f"{report}: no such file", file=sys.stderr)
            return 2
        shot = (args.out / f"{report.parent.name}-{report.stem}.png").resolve()
        _run(browser, [f"--window-size={args.width},{args.height}", f"--screenshot={shot}",
                       report.resolve().as_uri()])
        cells, wrapped = wrap_check(browser, report.resolve(), args.width)
        bad += wrapped
        print(f"{report}: screenshot {shot if shot.exists() else '(not written)'}; "
              f"{cells} '±' cells, {wrapped} wrapped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
