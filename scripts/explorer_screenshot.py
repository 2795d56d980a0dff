"""Regenerate docs/attention-explorer.png, the screenshot of the attention explorer in README.md and docs/attention.md.

The page `minigpt attention --out page.html` writes for a trained default run reading a small Python function,
opened in headless Chromium (offline, as the browser tests open it) with two heads enlarged and one token pinned in
the token view:

    python train.py --name demo                          # the default config, about 3 minutes on 2 CPU cores
    python scripts/explorer_screenshot.py                # reads runs/demo/checkpoints/best.ckpt

Needs Debian's chromium and chromium-driver packages and Selenium (the dev extra).
"""

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.browser, the browser the tests drive

from minigpt.maps import main as attention  # noqa: E402
from tests.browser import chromium, missing  # noqa: E402

PROMPT = "def f(x):\n    if x:\n        return x\n    return 0\n\ndef g(items):\n    for item in items:\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="runs/demo/checkpoints/best.ckpt")
    parser.add_argument("--out", default=str(ROOT / "docs" / "attention-explorer.png"))
    parser.add_argument("--heads", default="1.3,0.2", help="layer.head of the heads to enlarge, the last on top")
    parser.add_argument("--token", type=int, default=22, help="the token pinned in the token view")
    parser.add_argument("--size", default="1360x1000", help="browser viewport, WIDTHxHEIGHT in CSS pixels")
    parser.add_argument("--scale", type=float, default=1.5, help="device pixels per CSS pixel (sharp when shrunk)")
    args = parser.parse_args()
    if reason := missing():
        print(f"error: {reason}", file=sys.stderr)
        return 2

    width, height = (int(n) for n in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp, chromium(width, height, args.scale) as browser:
        from selenium.webdriver.common.by import By

        page = Path(tmp) / "explorer.html"
        with contextlib.redirect_stdout(io.StringIO()):  # the head table it prints
            code = attention(["--ckpt", args.ckpt, "--prompt", PROMPT, "--out", str(page)])
        if code != 0:
            return code
        browser.get(page.as_uri())
        for layer_head in args.heads.split(","):
            layer, head = layer_head.split(".")
            browser.find_element(By.CSS_SELECTOR, f'.head[data-layer="{layer}"][data-head="{head}"]').click()
        # Pinned by a click: taking the screenshot moves the pointer off the page, which a hover would not survive.
        browser.find_elements(By.CSS_SELECTOR, "#tokens .tok")[args.token].click()
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        if errors:
            print(f"error: the page logged errors: {errors}", file=sys.stderr)
            return 1
        browser.save_screenshot(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
