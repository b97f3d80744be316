"""Screenshot of the web demo for the README: docs/images/gradio_page.png.

    .venv/bin/python scripts/gradio_screenshot.py [--out docs/images/gradio_page.png]

Launches the app on 127.0.0.1, opens it in Debian's Chromium (Playwright), loads the synthetic
heart, clicks the left ventricle, waits for the 3D view, and saves a full-page screenshot.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gradio_app.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402


def click_slice_pixel(page, x: float, y: float) -> None:
    """Click picture pixel (x, y) of the slice image, whatever its on-screen size."""
    img = page.locator("#slice-image img").first
    box = img.bounding_box()
    nat = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    # the picture is drawn with object-fit: contain inside the element's box
    scale = min(box["width"] / nat[0], box["height"] / nat[1])
    left = box["x"] + (box["width"] - nat[0] * scale) / 2
    top = box["y"] + (box["height"] - nat[1] * scale) / 2
    page.mouse.click(left + (x + 0.5) * scale, top + (y + 0.5) * scale)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs/images/gradio_page.png")
    ap.add_argument("--height", type=int, default=1900, help="viewport height (px)")
    ap.add_argument("--structure", type=int, default=2, help="heart label to click (2 = LV)")
    a = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from core.clicks import first_click
    from core.engine import Reconstructor
    from core.geometry import take_slice
    from core.predict import DEMO_SEED
    from core.prompts import interior_point
    from core.synthetic import make_heart_phantom
    from gradio_app.app import CSS, build_app, close_app
    from gradio_app.render import SliceView

    image, label = make_heart_phantom(DEMO_SEED)
    gt = label.data == a.structure
    axis, idx = 2, image.shape[2] // 2  # the page opens on the middle axial slice
    if not take_slice(gt, axis, idx).any():
        idx = first_click(gt).slice_idx
    row, col = interior_point(take_slice(gt, axis, idx))
    view = SliceView.for_volume(image.shape, image.spacing, axis)
    x, y = view.rc_to_pixel(row, col)

    demo = build_app(Reconstructor.from_pretrained())
    demo.launch(
        server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, ssr_mode=False, css=CSS
    )
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page(viewport={"width": 1500, "height": a.height})
            page.goto(demo.local_url)
            page.click("#load-sample")
            page.wait_for_selector("#status :text('Loaded')", timeout=60_000)
            if idx != image.shape[2] // 2:
                num = page.locator("#slice-slider input[type=number]")
                num.fill(str(idx))
                num.press("Enter")
                time.sleep(1.0)
            click_slice_pixel(page, x, y)
            page.wait_for_selector("#status :text('reconstruction')", timeout=60_000)
            page.wait_for_selector("#view-3d canvas", timeout=60_000)
            page.wait_for_selector("#gt-3d canvas", timeout=60_000)
            time.sleep(3.0)  # let the WebGL views draw
            a.out.parent.mkdir(parents=True, exist_ok=True)
            # a viewport tall enough for the whole page: WebGL canvases outside the viewport
            # are not drawn, so a "full page" capture would show them black
            page.screenshot(path=str(a.out))
            browser.close()
    finally:
        close_app(demo)
    print(f"screenshot: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
