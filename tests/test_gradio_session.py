"""The web demo's session over several steps, as plain handler calls: Undo after Clear, what
the upload boxes show, the names of uploaded labels, a tab closed in the middle of a click.

The engine is the shipped model (``tests/gradio_common.py``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest_plugins = ["gradio_common"]  # the engine and sample fixtures

from gradio_common import LV, RV, Spy, click_lv_twice, lv_pixel, organ_pixel  # noqa: E402

from gradio_app import handlers as H  # noqa: E402
from gradio_app.session import Settings  # noqa: E402


def test_undo_after_clear_brings_every_object_back(sample, engine):
    """Clear is an undo step like a click: Undo restores the objects, their results and their
    own undo steps (Clear once dropped them for good: Undo said "Nothing to undo")."""
    session, _ = sample
    lv_first = click_lv_twice(session, engine)
    session, _ = H.new_object(session)
    session, _ = H.click(session, engine, *organ_pixel(session, RV)[1])
    results = [o.result for o in session.objects]

    session, view = H.clear(session)
    assert session.current.result is None and view.scene is None and view.downloads == []
    spy = Spy(engine)
    session, view = H.undo(session, spy, Settings())
    assert "Clear undone: 2 objects back" in view.status and spy.calls == []
    assert [o.result for o in session.objects] == results
    assert [row[1] for row in view.metrics] == ["LV", "RV"] and len(view.downloads) == 5
    # Undo goes on through the restored objects' own steps
    session, _ = H.undo(session)
    session, _ = H.undo(session)
    session, view = H.undo(session)
    assert len(session.objects) == 1 and session.current.result is lv_first
    assert len(session.current.prompts.clicks) == 1


def test_undo_takes_back_the_clicks_after_a_clear_then_the_clear(sample, engine):
    session, _ = sample
    _, (x, y) = lv_pixel(session)
    session, _ = H.click(session, engine, x, y)
    kept = session.current.result
    session, _ = H.clear(session)
    session, _ = H.click(session, engine, x + 8, y + 8)
    session, view = H.undo(session)
    assert "Last prompt undone" in view.status and session.current.result is None
    # the settings changed since the clear: the objects come back in the page's settings
    slice_mode = Settings(mode="slice")
    session, view = H.change_settings(session, engine, slice_mode)
    assert "next click" in view.status
    spy = Spy(engine)
    session, view = H.undo(session, spy, slice_mode)
    assert "Clear undone: 1 object back" in view.status
    assert [kw["mode"] for _, kw in spy.calls] == ["slice"]
    assert session.current.settings.mode == "slice" and session.current.result is not kept
    assert len(session.current.prompts.clicks) == 1
    # an empty clear is no step, and a new volume drops what Clear kept
    session, _ = H.clear(session)
    session, _ = H.clear(session)
    session, view = H.undo(session)
    assert "Clear undone" in view.status
    session, _ = H.clear(session)
    session, _ = H.load_sample(session)
    session, view = H.undo(session)
    assert view.status == "Nothing to undo." and session.current.result is None


def test_the_upload_boxes_show_the_files_loaded(tmp_path):
    """After a failed upload the page puts back in the boxes what is loaded (it kept showing
    the file that failed); the sample empties them; a file gradio deleted is no longer shown.
    The page's wiring of this: tests/test_gradio_browser.py."""
    from conftest import save_nifti

    from core.errors import InputError
    from core.io import save_image, save_label
    from core.synthetic import make_heart_phantom

    image, label = make_heart_phantom(5)
    vol = str(save_image(image, tmp_path / "ct.nii.gz"))
    lab = str(save_label(label, tmp_path / "ct-seg.nii.gz"))
    seg = save_nifti(np.ones((8, 8, 8), np.uint8), np.eye(4), tmp_path / "seg.nii.gz")
    bad = tmp_path / "notes.nii.gz"
    bad.write_text("not a volume")
    assert H.upload_boxes(None) == (None, None)
    session, _ = H.load_volume(None, vol, lab, root=tmp_path)
    try:
        with pytest.raises(InputError):
            H.load_volume(session, bad, None)
        with pytest.raises(InputError):
            H.load_labels(session, seg)
        assert H.upload_boxes(session) == (vol, lab)
        session, _ = H.load_labels(session, None)
        assert H.upload_boxes(session) == (vol, None)
        session, _ = H.load_labels(session, lab)
        os.remove(lab)  # gradio's cache deletes old uploads
        assert H.upload_boxes(session) == (vol, None)
        session, _ = H.load_sample(session)
        assert H.upload_boxes(session) == (None, None)
    finally:
        session.close()
    assert H.upload_boxes(session) == (None, None)


def test_uploaded_labels_are_named_after_their_file(tmp_path, engine):
    """The classes of an uploaded label map take its file's name (they were "label 1",
    "label 2"...): the one class of left_ventricle.nii.gz is "left_ventricle", the classes of
    heart-seg.nii are "heart-seg 1" to "heart-seg 5"; in the status and the metrics."""
    from core.io import LabelVolume, save_image, save_label
    from core.synthetic import make_heart_phantom

    image, label = make_heart_phantom(5)
    vol = save_image(image, tmp_path / "ct.nii.gz")
    lv = LabelVolume((label.data == LV).astype(np.uint8), label.affine)
    one = save_label(lv, tmp_path / "upload1" / "left_ventricle.nii.gz")
    many = save_label(label, tmp_path / "upload2" / "heart-seg.nii")
    session, view = H.load_volume(None, vol, one, root=tmp_path)
    try:
        assert view.status.endswith("Ground truth: left\\_ventricle.")  # markdown-escaped
        session, view = H.click(session, engine, *organ_pixel(session, 1)[1])
        assert view.metrics[0][1] == "left_ventricle"
        session, view = H.load_labels(session, many)
        names = ", ".join(f"heart-seg {k}" for k in range(1, 6))
        assert view.status.endswith(f"Ground truth: {names}.")
        assert H.render(session).metrics[0][1] == "heart-seg 2"
    finally:
        session.close()


def test_a_tab_closed_mid_click_is_one_quiet_log_line(sample, engine, caplog):
    """gradio ends the session of a closed tab (``on_unload``, from another thread) while its
    click may still be running; the click then failed on the closed session and the server
    logged an "unexpected error" with its traceback. Now: one info line, no files left."""
    import logging

    import gradio as gr

    from gradio_app.events import guard

    session, _ = sample

    class ClosedMidway(Spy):
        def predict(self, volume, prompts, **kw):
            result = super().predict(volume, prompts, **kw)
            session.close()  # the tab closes while the model runs
            return result

    caplog.set_level(logging.INFO, logger="gradio_app")
    with pytest.raises(gr.Error):
        guard(H.click)(session, ClosedMidway(engine), *lv_pixel(session)[1])
    (record,) = [r for r in caplog.records if r.name == "gradio_app"]
    assert record.levelno == logging.INFO and record.exc_info is None
    assert "the tab closed while it ran" in record.getMessage()
    assert "\n" not in record.getMessage() and not session.dir.exists()


def test_undo_pressed_while_a_click_computes_undoes_that_click(sample, engine):
    """gradio runs two events of one tab at once: Undo pressed while a click still computed
    said "Nothing to undo" and the click landed after it. The page's own event functions
    (built over an engine that holds the click) now take their turns."""
    import threading

    import gradio as gr

    from gradio_app.app import build_app, close_app
    from gradio_app.service import SharedEngine

    running, release = threading.Event(), threading.Event()

    class Held(SharedEngine):
        def predict(self, *args, **kwargs):
            running.set()
            assert release.wait(30)
            return super().predict(*args, **kwargs)

    demo = build_app(Held(engine.reconstructor))
    try:
        fns = {f.name: f.fn for f in demo.fns.values()}
        session, _ = sample
        x, y = lv_pixel(session)[1]
        evt = gr.SelectData(None, {"index": [x, y], "value": None})
        settings = ("volume", "base", "ct", False)
        click = threading.Thread(target=fns["on_click"], args=(session, "positive", *settings, evt))
        click.start()
        assert running.wait(30)
        undone = []
        undo = threading.Thread(target=lambda: undone.append(fns["on_undo"](session, *settings)))
        undo.start()
        undo.join(0.5)
        assert undo.is_alive()  # waits for the click
        release.set()
        click.join(30)
        undo.join(30)
        assert "Last prompt undone" in undone[0][6]  # the status
        assert session.current.prompts is None and session.current.result is None
    finally:
        release.set()
        close_app(demo)


def test_clearing_the_volume_box_unloads_the_volume(tmp_path, engine):
    """The X on the volume upload box left the volume (and its objects) loaded: the page no
    longer showed it, yet a click still reconstructed on it. Now clearing the box unloads the
    volume, its ground truth and objects; the page is back to its start; a click says to load
    a volume first. The page wires the box's clear event to it."""
    from core.errors import InputError
    from core.io import save_image, save_label
    from core.synthetic import make_heart_phantom
    from gradio_app.app import build_app, close_app

    image, label = make_heart_phantom(5)
    vol = str(save_image(image, tmp_path / "ct.nii.gz"))
    lab = str(save_label(label, tmp_path / "ct-seg.nii.gz"))
    session, _ = H.load_volume(None, vol, lab, root=tmp_path)
    demo = build_app(engine)
    try:
        x, y = lv_pixel(session)[1]
        session, _ = H.click(session, engine, x, y)
        assert session.current.result is not None
        (volume_box,) = [b for b in demo.blocks.values() if b.elem_id == "volume-file"]
        (on_clear,) = [
            f.fn for f in demo.fns.values() if (volume_box._id, "clear") in list(f.targets)
        ]
        out = on_clear(session)
        assert out[0] is session and session.volume is None and session.gt is None
        assert session.current.result is None and H.upload_boxes(session) == (None, None)
        slice_img, status, gt_panel, downloads = out[1], out[6], out[7], out[12]
        assert slice_img is None and downloads is None and not gt_panel.visible
        assert "Load a volume or the synthetic heart" in status
        with pytest.raises(InputError, match="load a NIfTI volume or the synthetic sample"):
            H.click(session, engine, x, y)
        with pytest.raises(InputError, match="load a NIfTI volume or the synthetic sample"):
            H.undo(session)
    finally:
        session.close()
        close_app(demo)


def test_an_uploaded_label_map_is_scanned_for_its_classes_once(tmp_path, engine):
    """Loading labels ran np.unique over the whole map twice (the class names, then the
    status), and the first metrics a find_objects pass; now one find_objects pass gives the
    classes, names, status and the boxes the metrics read."""
    from unittest import mock

    import scipy.ndimage

    from core.io import LabelVolume, save_image, save_label
    from core.synthetic import make_heart_phantom

    image, label = make_heart_phantom(5)
    data = label.data.copy()
    data[data == 3] = 0  # a gap in the values: classes 1, 2, 4, 5
    vol = save_image(image, tmp_path / "ct.nii.gz")
    lab = save_label(LabelVolume(data, label.affine), tmp_path / "heart-seg.nii.gz")
    names = {k: f"heart-seg {k}" for k in (1, 2, 4, 5)}
    status = "Ground truth: " + ", ".join(names.values()) + "."
    unique, find = np.unique, scipy.ndimage.find_objects

    def scans(*spies):
        return sum(np.shape(c.args[0]) == data.shape for s in spies for c in s.call_args_list)

    with (
        mock.patch("numpy.unique", wraps=unique) as u,
        mock.patch("scipy.ndimage.find_objects", wraps=find) as f,
    ):
        session, view = H.load_volume(None, vol, lab, root=tmp_path)
        on_load = scans(u, f)
        u.reset_mock(), f.reset_mock()
        session, again = H.load_labels(session, lab)
        on_labels = scans(u, f)
        u.reset_mock(), f.reset_mock()
        session, clicked = H.click(session, engine, *organ_pixel(session, 2)[1])
        on_click = scans(u, f)
    try:
        assert on_load == 1 and on_labels == 1 and on_click == 0
        assert [row[1] for row in clicked.metrics] == ["heart-seg 2"]
        assert session.class_names == names
        assert view.status.endswith(status) and again.status.endswith(status)
    finally:
        session.close()


def test_a_real_error_after_the_tab_closed_is_logged_with_its_traceback(sample, engine, caplog):
    """Every error of a request whose tab had closed was one info line, a real one (the model
    failing) too: its traceback was lost. Now only the failures the closing causes are quiet;
    any other error is logged as an error with its traceback."""
    import logging

    import gradio as gr

    from gradio_app.events import guard

    session, _ = sample

    class FailsAfterClosing(Spy):
        def predict(self, volume, prompts, **kw):
            session.close()  # the tab closes while the model runs, and the model fails
            raise RuntimeError("the model failed")

    caplog.set_level(logging.INFO, logger="gradio_app")
    with pytest.raises(gr.Error):
        guard(H.click)(session, FailsAfterClosing(engine), *lv_pixel(session)[1])
    (record,) = [r for r in caplog.records if r.name == "gradio_app"]
    assert record.levelno >= logging.WARNING and record.exc_info is not None
    assert "the model failed" in str(record.exc_info[1]) and "click" in record.getMessage()


def test_a_tab_closed_while_the_page_is_drawn_is_quiet_and_leaves_no_files(
    sample, engine, caplog, monkeypatch
):
    """A tab closed after the model ran, while the page's files were written: the writes
    made the removed session folder again and left the files behind, and the request
    "succeeded". Now it is the closed-tab case: one info line, no files."""
    import logging

    import gradio as gr

    from gradio_app import page
    from gradio_app.events import guard

    session, _ = sample
    draw = page.save_scene_glb

    def closing(*args, **kwargs):
        session.close()
        return draw(*args, **kwargs)

    monkeypatch.setattr(page, "save_scene_glb", closing)
    caplog.set_level(logging.INFO, logger="gradio_app")
    with pytest.raises(gr.Error, match="closed"):
        guard(H.click)(session, engine, *lv_pixel(session)[1])
    (record,) = [r for r in caplog.records if r.name == "gradio_app"]
    assert record.levelno == logging.INFO and record.exc_info is None
    assert "the tab closed while it ran" in record.getMessage()
    assert not session.dir.exists()
