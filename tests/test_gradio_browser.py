"""The web demo in a real browser: Debian's Chromium driven by Playwright (headless).

Load the sample, click the left ventricle on the slice, wait for the 3D view, then check what
came back: the mesh file (downloaded through the page's link), the overlay on the slice
picture, a drawn 3D canvas, and that closing the tab, even in the middle of a click, removes
the session's files and logs no error.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")

from gradio_app.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from gradio_app.service import SharedEngine  # noqa: E402

LV = 2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:Warning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:Warning"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def click_picture_pixel(page, selector: str, x: float, y: float) -> None:
    """Click pixel (x, y) of an <img>, whatever size the page draws it at."""
    img = page.locator(f"{selector} img").first
    box = img.bounding_box()
    nat = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    scale = min(box["width"] / nat[0], box["height"] / nat[1])  # object-fit: contain
    left = box["x"] + (box["width"] - nat[0] * scale) / 2
    top = box["y"] + (box["height"] - nat[1] * scale) / 2
    page.mouse.click(left + (x + 0.5) * scale, top + (y + 0.5) * scale)


def fetch_png(page, selector: str) -> np.ndarray:
    from PIL import Image

    src = page.locator(f"{selector} img").first.get_attribute("src")
    data = page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class HeldEngine(SharedEngine):
    """The shared engine, whose next prediction can be held until a session has closed: a tab
    closed in the middle of a click."""

    def __init__(self, reconstructor):
        super().__init__(reconstructor)
        self.hold, self.held = None, threading.Event()

    def predict(self, *args, **kwargs):
        session, self.hold = self.hold, None
        if session is not None:
            self.held.set()
            deadline = time.time() + 30
            while not session.closed and time.time() < deadline:
                time.sleep(0.05)
        return super().predict(*args, **kwargs)


def upload(page, box: str, path) -> None:
    page.locator(f"#{box} input[type=file]").set_input_files(str(path))


def wait_box(page, box: str, name: str, state: str = "visible") -> None:
    """Wait until upload box ``box`` shows the file ``name`` (or, "detached", no longer)."""
    page.wait_for_selector(f"#{box} td.filename[aria-label='{name}']", state=state, timeout=30_000)


def check_uploads(page, session, tmp_path, image, label) -> None:
    """Bad uploads get a one-line error and leave their box, which shows what is loaded again
    (it kept showing the file that failed); a volume and its labels load; the sample empties
    the boxes and keeps its own ground truth."""
    from conftest import save_nifti

    from core.io import save_image, save_label

    seg = save_nifti(np.ones((8, 8, 8), np.uint8), np.eye(4), tmp_path / "seg.nii.gz")
    upload(page, "label-file", seg)
    page.wait_for_selector("text=seg.nii.gz: shape (8, 8, 8) does not match", timeout=30_000)
    wait_box(page, "label-file", "seg.nii.gz", "detached")
    assert session.class_name(LV) == "LV"  # the sample's ground truth stays
    bad = tmp_path / "notes.txt"
    bad.write_text("not a volume")
    upload(page, "volume-file", bad)
    page.wait_for_selector("text=notes.txt: not a NIfTI file", timeout=30_000)
    assert page.locator("text=Traceback").count() == 0
    wait_box(page, "volume-file", "notes.txt", "detached")

    upload(page, "volume-file", save_image(image, tmp_path / "my_ct.nii.gz"))
    page.wait_for_selector("#status :text('my_ct.nii.gz')", timeout=30_000)
    assert session.name == "my_ct.nii.gz" and session.gt is None
    upload(page, "label-file", save_label(label, tmp_path / "heartseg.nii.gz"))
    page.wait_for_selector("#status :text('heartseg 2')", timeout=30_000)
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG not a volume")
    # the X on the volume box unloads the volume and its labels: the page is back at its start
    page.click("#volume-file button[aria-label='Clear']")
    page.wait_for_selector("#status :text('Load a volume or the synthetic heart')", timeout=30_000)
    wait_box(page, "label-file", "heartseg.nii.gz", "detached")
    assert session.volume is None and session.gt is None and session.current.result is None
    upload(page, "volume-file", bad)
    page.wait_for_selector("text=scan.png: not a NIfTI file", timeout=30_000)
    wait_box(page, "volume-file", "scan.png", "detached")  # nothing is loaded
    assert session.volume is None

    page.click("#load-sample")
    page.wait_for_selector("#status :text('synthetic heart')", timeout=60_000)
    time.sleep(1.0)  # emptying the boxes must not count as the user clearing them
    assert session.volume is not None and session.class_name(LV) == "LV"
    assert page.locator("text=Ground truth removed").count() == 0


def test_click_the_sample_in_a_browser(tmp_path, caplog):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    import trimesh

    from core.engine import Reconstructor
    from core.geometry import take_slice
    from core.metrics import dice
    from core.predict import DEMO_SEED
    from core.prompts import interior_point
    from core.synthetic import make_heart_phantom
    from gradio_app.app import CSS, build_app, close_app
    from gradio_app.render import GT_OUTLINE, POSITIVE, SliceView

    image, label = make_heart_phantom(DEMO_SEED)
    axis, idx = 2, image.shape[2] // 2  # the page opens on the middle axial slice
    gt = label.data == LV
    row, col = interior_point(take_slice(gt, axis, idx))
    view = SliceView.for_volume(image.shape, image.spacing, axis)
    x, y = view.rc_to_pixel(row, col)

    engine = HeldEngine(Reconstructor.from_pretrained())
    demo = build_app(engine)
    demo.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        css=CSS,
    )
    files = demo.sam3d_files
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page(viewport={"width": 1500, "height": 1480})
            page.goto(demo.local_url)
            page.click("#load-sample")
            page.wait_for_selector("#status :text('Loaded')", timeout=60_000)
            before = fetch_png(page, "#slice-image")
            assert before.shape == (view.height, view.width, 3)

            click_picture_pixel(page, "#slice-image", x, y)
            page.wait_for_selector("#status :text('reconstruction')", timeout=60_000)
            page.wait_for_selector("#view-3d canvas", timeout=60_000)
            page.wait_for_selector("#downloads a[download$='.glb']", timeout=60_000)
            time.sleep(2.0)  # let WebGL draw

            # the server's session got the click on the voxel we aimed at
            (session,) = files.sessions.values()
            clk = session.current.prompts.clicks[-1]
            assert (clk.axis, clk.slice_idx, clk.row, clk.col) == (axis, idx, row, col)
            result = session.current.result
            assert dice(result.mask, gt) > 0.3  # modest: the shipped base may be retrained

            # the mesh, downloaded through the page's link
            href = page.locator("#downloads a[download$='.glb']").first.get_attribute("href")
            glb = page.request.get(href).body()
            mesh = trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh")
            assert len(mesh.faces) == result.mesh.n_faces
            np.testing.assert_allclose(mesh.bounds, result.mesh.bounds(), atol=1e-3)

            # the overlay: the marker at the click, the mask tinted around it
            after = fetch_png(page, "#slice-image")
            assert tuple(after[int(round(y)), int(round(x))]) == POSITIVE
            drawn = view.render(take_slice(result.mask, axis, idx))
            changed = np.any(after != before, axis=-1)
            outline = np.all(before == GT_OUTLINE, axis=-1)  # drawn over the mask
            assert changed[drawn & ~outline].mean() > 0.98
            assert (changed & ~drawn).mean() < 0.01  # only the mask and the marker changed

            # the 3D view drew something besides its background
            shot = page.locator("#view-3d canvas").first.screenshot()
            from PIL import Image

            pix = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)
            background = np.array([0.08, 0.08, 0.1]) * 255
            assert (np.abs(pix - background).sum(-1) > 60).mean() > 0.02

            # metrics and the ground-truth comparison are on the page
            assert page.locator("#metrics :text('LV')").count() >= 1
            page.screenshot(path=str(tmp_path / "gradio_page.png"))
            assert (tmp_path / "gradio_page.png").stat().st_size > 50_000

            # the slice slider shows another slice
            src = page.locator("#slice-image img").first.get_attribute("src")
            box = page.locator("#slice-slider input[type=number]")
            box.fill("20")
            box.press("Enter")
            page.wait_for_function(
                "s => document.querySelector('#slice-image img').src !== s", arg=src
            )
            assert session.slice_idx == 20

            check_uploads(page, session, tmp_path, image, label)

            # closing the tab in the middle of a click ends the session and removes its files;
            # the click, left without its session, is one line of the log, not an error
            caplog.set_level(logging.INFO, logger="gradio_app")
            session_dir = session.dir
            assert session_dir.is_dir()
            engine.hold = session
            click_picture_pixel(page, "#slice-image", x, y)
            assert engine.held.wait(30)
            page.close()
            deadline = time.time() + 30
            logged = []
            while not logged and time.time() < deadline:
                time.sleep(0.2)
                logged = [r for r in caplog.records if r.name == "gradio_app"]
            assert not session_dir.exists() and not files.sessions
            assert [(r.levelno, r.exc_info) for r in logged] == [(logging.INFO, None)]
            assert "on_click: the tab closed while it ran" in logged[0].getMessage()
            browser.close()
    finally:
        close_app(demo)
