"""The web demo's handlers as plain functions (no server, no browser).

The engine is the shipped model, loaded once for the module. Accuracy floors are modest on
purpose: the shipped base may be retrained; on the demo heart's left ventricle it reached a
Dice of 0.54 (volume mode) when these tests were written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import save_nifti

pytest.importorskip("gradio")
pytest_plugins = ["gradio_common"]  # the engine and sample fixtures

from gradio_common import (  # noqa: E402
    LV,
    RV,
    Spy,
    click_lv_twice,
    lv_pixel,
    organ_pixel,
    pixel_of,
    reconstruct_at,
)

from core.clicks import first_click  # noqa: E402
from core.engine import CubePolicy  # noqa: E402
from core.errors import InputError  # noqa: E402
from core.geometry import take_slice  # noqa: E402
from core.io import load_label  # noqa: E402
from core.mesh import load_mesh  # noqa: E402
from core.metrics import dice  # noqa: E402
from gradio_app import handlers as H  # noqa: E402
from gradio_app.render import GT_OUTLINE, POSITIVE, SliceView, colour_of, render_slice  # noqa: E402
from gradio_app.session import Session, Settings  # noqa: E402

DICE_FLOOR = 0.3  # measured 0.54 on the demo heart's LV with the first shipped base


# --------------------------------------------------------------------------------------------
# picture <-> slice mapping


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_picture_pixels_map_back_to_the_voxel_drawn_there(axis):
    shape, spacing = (20, 13, 9), (1.0, 2.5, 1.5)
    vol = np.arange(np.prod(shape)).reshape(shape)  # every voxel has its own value
    idx = shape[axis] // 2
    sl = take_slice(vol, axis, idx)
    view = SliceView.for_volume(shape, spacing, axis, size=300)
    pic = view.render(sl)
    assert pic.shape == (view.height, view.width)
    # upscaled to ~300 px, non-square voxels stretched to their size in mm
    r_ax, c_ax = [a for a in range(3) if a != axis]
    mm_w, mm_h = shape[r_ax] * spacing[r_ax], shape[c_ax] * spacing[c_ax]
    assert max(view.width, view.height) == 300
    assert view.width / view.height == pytest.approx(mm_w / mm_h, rel=0.02)
    # every picture pixel maps to the slice pixel whose value is drawn there
    for y in range(view.height):
        for x in range(0, view.width, 7):
            r, c = view.pixel_to_rc(x, y)
            assert pic[y, x] == sl[r, c]
    # sub-pixel positions inside a drawn pixel land on the same voxel
    assert view.pixel_to_rc(10.9, 20.2) == view.pixel_to_rc(10, 20)
    # every slice pixel's centre maps back to itself
    for r in range(view.n_rows):
        for c in range(view.n_cols):
            assert view.pixel_to_rc(*view.rc_to_pixel(r, c)) == (r, c)
    # orientation: rows run left to right, columns bottom to top (as core.viz)
    assert view.pixel_to_rc(0, view.height - 1) == (0, 0)
    assert view.pixel_to_rc(view.width - 1, 0) == (view.n_rows - 1, view.n_cols - 1)
    for x, y in ((-1, 0), (0, view.height), (view.width, 5)):
        with pytest.raises(ValueError, match="outside"):
            view.pixel_to_rc(x, y)


def test_a_small_body_in_a_field_of_air_is_drawn_with_contrast(tmp_path):
    """A head CT as OpenKBP's (most voxels padding air at -1024): the page draws soft tissue
    grey, between air and bone, not white (its window once ended in soft tissue). The rule
    itself: core.intensity.display_window, tests/test_intensity.py."""
    from core.io import Volume
    from gradio_app.session import Session

    vol = np.full((64, 64, 64), -1024.0, np.float32)
    r = np.linalg.norm(np.indices(vol.shape) - 31.5, axis=0)
    vol[r < 10] = 1000.0  # skull
    vol[r < 9] = 40.0  # soft tissue: with the skull, 1.6% of the voxels
    s = Session(tmp_path)
    try:
        s.set_volume(Volume(vol, np.eye(4), "head"), "head")
        lo, hi = s.window
        grey = (np.array([-1024.0, 40.0, 1000.0]) - lo) / (hi - lo)
        assert grey[0] <= 0.0 and 0.3 < grey[1] < 0.7 and grey[2] >= 0.95
    finally:
        s.close()


def test_a_click_anywhere_on_a_drawn_voxel_selects_that_voxel(sample, engine):
    session, view = sample
    assert view.slice_image.shape[:2] == (512, 512)  # 64 voxels drawn 8x larger
    (r, c), (x, y) = lv_pixel(session)
    x0, y0 = int(np.floor(x)) - 3, int(np.floor(y)) - 3  # corner of the 8x8 block
    session, _ = H.click(session, engine, x0 + 7.9, y0 + 0.1)
    clk = session.current.prompts.clicks[-1]
    assert (clk.axis, clk.slice_idx, clk.row, clk.col) == (2, session.slice_idx, r, c)
    assert session.gt.data[clk.voxel_index()] == LV


# --------------------------------------------------------------------------------------------
# a click on the sample


def test_sample_loads_with_ground_truth(sample):
    session, view = sample
    assert session.volume.shape == (64, 64, 64) and session.gt is not None
    assert (view.axis, view.slice_idx, view.n_slices) == (2, 32, 64)
    assert view.has_gt and "LV" in view.status
    assert view.views is not None and view.scene is None and view.downloads == []


def test_click_on_the_lv_gives_surface_overlays_metrics_and_downloads(sample, engine):
    session, _ = sample
    (r, c), (x, y) = lv_pixel(session)
    session, view = H.click(session, engine, x, y)
    res = session.current.result
    gt = session.gt.data == LV
    assert res.mask.any()
    assert dice(res.mask, gt) > DICE_FLOOR

    # the 3D scene: a glb whose surface lies around the LV
    scene = load_mesh(view.scene)
    assert scene.n_faces > 100
    lo, hi = scene.bounds()
    click_mm = (
        session.volume.affine[:3, :3] @ [r, c, session.slice_idx] + session.volume.affine[:3, 3]
    )
    assert np.all(lo <= click_mm) and np.all(click_mm <= hi)

    # the slice picture: the click marker at the click, the mask tinted in the object's colour
    pic = view.slice_image
    assert tuple(pic[int(round(y)), int(round(x))]) == POSITIVE
    plain = render_slice(
        H.slice_view(session), take_slice(session.volume.data, 2, session.slice_idx), session.window
    )
    tinted = np.any(pic != plain, axis=-1)
    drawn_mask = H.slice_view(session).render(take_slice(res.mask, 2, session.slice_idx))
    assert tinted[drawn_mask].mean() > 0.95  # every mask pixel is coloured...
    # ...towards the object's orange (outside the ground-truth outlines and the marker)
    fill = drawn_mask & ~np.all(pic == GT_OUTLINE, axis=-1) & ~np.all(pic == POSITIVE, axis=-1)
    shift = pic[fill].astype(int) - plain[fill].astype(int)
    assert colour_of(0)[0] > colour_of(0)[2]
    assert np.median(shift[:, 0] - shift[:, 2]) > 40

    # metrics against the ground-truth class under the click
    (row,) = view.metrics
    assert row[0] == 1 and row[1] == "LV"
    assert row[2] == pytest.approx(dice(res.mask, gt), abs=1e-3)
    assert all(np.isfinite(v) for v in row[3:])
    assert view.compare is not None and view.compare.ndim == 3
    assert load_mesh(view.gt_scene).n_faces > 100
    assert view.camera_mm > 0  # both 3D views at one scale

    # downloads: the mask on the input's grid, and the object's mesh as .glb and as .ply
    # (3D Slicer reads the .ply's SPACE=RAS; it has no .glb reader)
    mask_path, mesh_path, ply_path = view.downloads
    lab = load_label(mask_path)
    np.testing.assert_array_equal(lab.data.astype(bool), res.mask)
    np.testing.assert_allclose(lab.affine, session.volume.affine)
    assert mesh_path.endswith(".glb") and ply_path.endswith(".ply")
    glb, ply = load_mesh(mesh_path), load_mesh(ply_path)
    assert glb.n_vertices == res.mesh.n_vertices
    np.testing.assert_array_equal(ply.vertices, glb.vertices)
    assert b"SPACE=RAS" in Path(ply_path).read_bytes()[:400]

    # the time taken is reported
    assert view.timings["total"] > 0 and view.timings["wall"] >= view.timings["total"]
    assert "ms" in view.status and "Object 1" in view.status


def test_more_clicks_refine_the_previous_result(sample, engine):
    session, _ = sample
    spy = Spy(engine)
    _, (x, y) = lv_pixel(session)
    session, _ = H.click(session, spy, x, y)
    first = session.current.result
    session, _ = H.click(session, spy, x + 60, y, tool="negative")
    assert spy.calls[0][1]["previous"] is None
    assert spy.calls[1][1]["previous"] is first
    assert [c.positive for c in session.current.prompts.clicks] == [True, False]
    # other settings: every object is redone from its prompts, not refined
    session, view = H.change_settings(session, spy, Settings(mode="slice"))
    assert spy.calls[2][1].get("previous") is None and spy.calls[2][1]["mode"] == "slice"
    assert "Redone 1" in view.status and "slice mode" in view.status
    assert len(spy.calls[2][0].clicks) == 2


def test_zoom_in_setting_reaches_the_engine_and_redoes_the_object(sample, engine):
    session, _ = sample
    spy = Spy(engine)
    la = first_click(session.gt.data == 1)  # the LA: a compact chamber the engine zooms in on
    session, _ = H.show_slice(session, la.slice_idx)  # the sample opens on an axial slice
    xy = pixel_of(session, la.row, la.col)
    session, _ = H.click(session, spy, *xy, settings=Settings(zoom_in=True))
    assert spy.calls[0][1]["zoom_in"] is True
    zoomed = session.current.result
    assert zoomed.passes == 3 and zoomed.cube.spacing < 2.0
    assert "volume mode with zoom-in" in H.render(session).status
    session, view = H.change_settings(session, spy, Settings())  # zoom-in off: redone
    assert spy.calls[1][1]["zoom_in"] is False and "Redone 1" in view.status
    assert session.current.result.passes == 2 and session.current.result.cube.spacing == 3.0
    # the setting travels with each call: the shared engine's own policy never changes
    assert engine.reconstructor.policy == CubePolicy()
    # in slice mode zoom-in changes nothing: ticking it there redoes nothing
    session, _ = H.change_settings(session, spy, Settings(mode="slice"))
    n = len(spy.calls)
    session, view = H.change_settings(session, spy, Settings(mode="slice", zoom_in=True))
    assert len(spy.calls) == n and "next click" in view.status


def test_box_takes_two_clicks(sample, engine):
    session, _ = sample
    (r, c), _ = lv_pixel(session)
    spy = Spy(engine)
    session, view = H.click(session, spy, *pixel_of(session, r - 4, c - 5), tool="box")
    assert spy.calls == [] and "first corner" in view.status
    session, view = H.click(session, spy, *pixel_of(session, r + 4, c + 3), tool="box")
    assert session.current.prompts.box.rc == (r - 4, c - 5, r + 5, c + 4)
    assert session.current.result.mask.any() and view.scene is not None


def test_negative_point_first_is_refused(sample, engine):
    session, _ = sample
    with pytest.raises(InputError, match="negative point needs a positive point"):
        H.click(session, engine, 100, 100, tool="negative")


def test_undo_new_object_and_clear(sample, engine):
    session, _ = sample
    first = click_lv_twice(session, engine)
    session, view = H.undo(session)
    assert session.current.result is first and len(session.current.prompts.clicks) == 1
    # a second object: the right ventricle
    session, view = H.new_object(session)
    assert len(session.objects) == 2 and session.current.result is None
    session, view = H.click(session, engine, *organ_pixel(session, RV)[1])
    assert [row[1] for row in view.metrics] == ["LV", "RV"]
    labels = load_label(view.downloads[0]).data
    assert set(np.unique(labels)) == {0, 1, 2}
    assert len(view.downloads) == 5  # the mask and one .glb and .ply per object
    session, view = H.clear(session)
    assert view.downloads == [] and view.scene is None and session.current.result is None


def test_metrics_and_comparison_are_the_whole_volumes_and_kept_per_object(
    sample, engine, monkeypatch
):
    """The metrics table and the comparison picture read only the boxes of the objects and
    of their ground truth: their numbers and pixels are the whole volume's. A step computes
    the rows of the objects whose result changed, not of the others."""
    import core.metrics
    from core.io import voxel_volume_mm3
    from core.mesh import mask_to_mesh
    from gradio_app.render import comparison_panels

    session, _ = sample
    H.click(session, engine, *lv_pixel(session)[1])
    H.new_object(session)
    session, view = H.click(session, engine, *organ_pixel(session, RV)[1])
    ml = voxel_volume_mm3(session.volume.affine) / 1000.0
    for row, (_, obj), cls in zip(view.metrics, session.done, (LV, RV), strict=True):
        gt = session.gt.data == cls
        m = core.metrics.binary_metrics(
            obj.result.mask, gt, spacing=session.volume.spacing, tolerance_mm=1.0
        )
        want = [m["dice"], m["hd95"], m["assd"], m["surface_dice"], m["chamfer"]]
        assert row[2:7] == [round(float(v), 3 if k in (0, 3) else 2) for k, v in enumerate(want)]
        assert row[8] == round(float(gt.sum()) * ml, 2)
    for cls in (LV, RV):  # the ground truth's surfaces, from its boxes
        whole = mask_to_mesh(session.gt.data == cls, session.volume.affine, smooth_iterations=10)
        assert np.array_equal(session.gt_meshes[cls].vertices, whole.vertices)
    rv = session.current.result
    np.testing.assert_array_equal(
        view.compare,
        comparison_panels(
            session.volume.data, session.volume.spacing, session.window,
            session.gt.data == RV, rv.mask, colour_of(1),
        ),
    )  # fmt: skip

    calls = []
    real = core.metrics.binary_metrics
    monkeypatch.setattr(
        core.metrics, "binary_metrics", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    session, again = H.click(session, engine, *organ_pixel(session, RV)[1])  # refines the RV
    assert len(calls) == 1  # the RV's row; the LV's is kept
    assert again.metrics[0] == view.metrics[0]


def test_undo_after_changing_the_mode_undoes_the_last_click_in_the_new_mode(sample, engine):
    """Two clicks, then slice mode (every object redone), then Undo: the last click goes, and
    the object stays in the mode the page shows (undo once restored the volume-mode result
    of the same two clicks, saying "Last prompt undone", under a Mode set to slice)."""
    session, _ = sample
    click_lv_twice(session, engine)
    slice_mode = Settings(mode="slice")
    session, _ = H.change_settings(session, engine, slice_mode)
    spy = Spy(engine)
    session, view = H.undo(session, spy, slice_mode)
    obj = session.current
    assert len(obj.prompts.clicks) == 1 and obj.settings.mode == "slice"
    assert [(len(p.clicks), kw["mode"]) for p, kw in spy.calls] == [(1, "slice")]
    assert "Last prompt undone" in view.status and "slice mode" in H.render(session).status
    session, _ = H.undo(session, spy, slice_mode)
    assert obj.prompts is None and len(spy.calls) == 1  # nothing left to redo


def test_overlapping_objects_never_overwrite_in_the_label_map(sample, engine):
    """Two objects on the same voxels: the downloaded label map keeps the earlier object's
    (it gave them to the later one silently), the status says so, each mesh stays whole."""
    session, _ = sample
    _, (x, y) = lv_pixel(session)
    session, _ = H.click(session, engine, x, y)
    first = session.current.result.mask
    session, _ = H.new_object(session)
    session, view = H.click(session, engine, x, y)  # the same structure again
    second = session.current.result.mask
    shared = int(np.count_nonzero(first & second))
    assert shared > 0
    labels = load_label(view.downloads[0]).data
    assert np.array_equal(labels == 1, first)
    assert np.array_equal(labels == 2, second & ~first)
    assert f"{shared} voxels of object 2 stay with object 1" in view.status
    assert len(view.downloads) == 5  # the mask, each object's .glb and .ply
    # the steps after it rewrite the label map and still say so
    session, view = H.new_object(session)
    assert "Object 3: click the next structure." in view.status
    assert f"{shared} voxels of object 2 stay with object 1" in view.status


def test_changing_axis_and_slice(sample):
    session, _ = sample
    session, view = H.set_axis(session, 0)
    assert (view.axis, view.slice_idx, view.n_slices) == (0, 32, 64)
    session, view = H.show_slice(session, 10)
    assert view.slice_idx == 10 and view.slice_image.shape == (512, 512, 3)
    with pytest.raises(ValueError, match="slice 64 is outside axis 0"):
        H.show_slice(session, 64)
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        H.set_axis(session, 3)


# --------------------------------------------------------------------------------------------
# uploads and bad input


def test_upload_volume_and_labels(heart_files, tmp_path):
    img_path, lab_path, image, label = heart_files
    session, view = H.load_volume(None, img_path, lab_path, root=tmp_path)
    assert session.name == "heart.nii.gz" and view.has_gt
    np.testing.assert_array_equal(session.gt.data, label.data)
    session, view = H.load_labels(session, None)
    assert session.gt is None and not view.has_gt
    session.close()


def test_an_eight_bit_volume_as_ct_says_to_check_the_modality(tmp_path, engine):
    from core.synthetic import make_heart_phantom

    image, label = make_heart_phantom(5)
    u8 = (np.clip((image.data + 1024) / 1500, 0, 1) * 255).astype(np.uint8)
    path = save_nifti(u8, image.affine, tmp_path / "grey.nii.gz")
    session, view = H.load_volume(None, path, root=tmp_path)
    gt = label.data == LV
    c = first_click(gt)
    session.slice_idx = c.slice_idx
    x, y = pixel_of(session, c.row, c.col)
    session, view = H.click(session, engine, x, y)
    assert "**Check the modality**: values 0..255 do not look like CT" in view.status
    as_ct = dice(session.current.result.mask, gt)
    session, view = H.change_settings(session, engine, Settings(modality="mr"))
    assert "Check the modality" not in view.status and "Redone 1 object" in view.status
    assert dice(session.current.result.mask, gt) > as_ct
    session.close()
    # the API says it too
    out = reconstruct_at(engine, path, c, tmp_path / "o")
    assert len(out["info"]["warnings"]) == 1 and "Hounsfield" in out["info"]["warnings"][0]


def _bad(tmp_path, kind):
    img = np.zeros((16, 16, 16), np.float32)
    eye = np.eye(4)
    if kind == "not nifti":
        p = tmp_path / "scan.png"
        p.write_bytes(b"\x89PNG not a volume")
        return p, None, "scan.png: not a NIfTI file"
    if kind == "garbage":
        p = tmp_path / "scan.nii.gz"
        p.write_bytes(b"definitely not gzip")
        return p, None, "scan.nii.gz: not a valid NIfTI file"
    if kind == "2d":
        return (
            save_nifti(img[:, :, 0], eye, tmp_path / "flat.nii.gz"),
            None,
            "flat.nii.gz: expected a 3D volume, got 2D",
        )
    if kind == "4d":
        p = save_nifti(np.zeros((16, 16, 16, 3), np.float32), eye, tmp_path / "dyn.nii.gz")
        return p, None, "dyn.nii.gz: expected a 3D volume, got 4D"
    vol = save_nifti(img, eye, tmp_path / "ct.nii.gz")
    if kind == "label shape":
        lab = save_nifti(np.ones((16, 16, 15), np.uint8), eye, tmp_path / "seg.nii.gz")
        return (
            vol,
            lab,
            "seg.nii.gz: shape (16, 16, 15) does not match the image's (16, 16, 16) (ct.nii.gz)",
        )
    if kind == "label affine":
        lab = save_nifti(
            np.ones((16, 16, 16), np.uint8), np.diag([2, 1, 1, 1.0]), tmp_path / "seg.nii.gz"
        )
        return vol, lab, "seg.nii.gz: affine differs from the image's (ct.nii.gz)"
    if kind == "label not integer":
        lab = save_nifti(np.full((16, 16, 16), 0.5, np.float32), eye, tmp_path / "seg.nii.gz")
        return vol, lab, "seg.nii.gz: label map has non-integer values"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["not nifti", "garbage", "2d", "4d", "label shape", "label affine", "label not integer"]
)
def test_bad_uploads_give_one_line_messages_naming_the_file(tmp_path, kind):
    from gradio_app.events import guard

    vol, lab, expected = _bad(tmp_path, kind)
    with pytest.raises(InputError) as info:
        H.load_volume(None, vol, lab, root=tmp_path)
    msg = str(info.value)
    assert msg.startswith(expected), msg
    assert "\n" not in msg and str(tmp_path) not in msg  # the user's file name, no temp path

    import gradio as gr

    with pytest.raises(gr.Error) as info:
        guard(H.load_volume)(None, vol, lab, root=tmp_path)
    assert info.value.message.startswith(expected.split(":")[0])
    assert "Traceback" not in info.value.message


def test_a_bad_label_map_with_a_new_volume_keeps_the_work_on_screen(tmp_path, sample, engine):
    """Uploading another volume while the label box still holds a label map of another grid:
    the error names the labels, and the session stays on what the page still shows (the old
    volume, its ground truth and objects), not on a volume the page never drew."""
    session, _ = sample
    _, (x, y) = lv_pixel(session)
    session, _ = H.click(session, engine, x, y)
    result, name = session.current.result, session.name
    vol, lab, _ = _bad(tmp_path, "label shape")
    with pytest.raises(InputError, match=r"^seg\.nii\.gz: shape"):
        H.load_volume(session, vol, lab, root=tmp_path)
    assert session.name == name and session.volume.shape == (64, 64, 64)
    assert session.gt is not None and session.current.result is result


def test_clicks_outside_or_before_loading_are_refused(sample, engine):
    session, _ = sample
    with pytest.raises(ValueError, match=r"outside the 512x512 slice picture"):
        H.click(session, engine, 600, 10)
    with pytest.raises(InputError, match="load a NIfTI volume or the synthetic sample first"):
        H.click(None, engine, 10, 10)
    with pytest.raises(InputError, match="unknown weights 'nope'; choose one of base"):
        H.click(session, engine, 200, 200, settings=Settings(weights="nope"))
    with pytest.raises(ValueError, match="mode must be one of volume, slice"):
        H.click(session, engine, 200, 200, settings=Settings(mode="3d"))


def test_unexpected_errors_are_not_shown_as_tracebacks():
    import gradio as gr

    from gradio_app.events import guard

    def broken():
        raise RuntimeError("secret internals")

    with pytest.raises(gr.Error) as info:
        guard(broken)()
    assert "Internal error" in info.value.message and "secret" not in info.value.message


# --------------------------------------------------------------------------------------------
# sessions and their files


def test_session_files_are_removed_when_the_session_ends(tmp_path, engine):
    from gradio_app.events import close_session

    session, _ = H.load_sample(None, root=tmp_path)
    _, (x, y) = lv_pixel(session)
    session, view = H.click(session, engine, x, y)
    assert session.dir.is_dir() and all(__import__("os").path.exists(p) for p in view.downloads)
    close_session(session)  # what gr.State's delete_callback does
    assert not session.dir.exists() and list(tmp_path.iterdir()) == []
    close_session(session)  # idempotent


def test_old_step_folders_are_pruned(tmp_path):
    s = Session(tmp_path)
    for _ in range(6):
        s.step_dir()
    assert len(list(s.dir.iterdir())) == 3
    s.close()


def test_download_names_are_clean_and_one_per_object(sample, engine):
    """Download names took the volume's name with every other character as "_", so the
    sample's came out "synthetic_heart__seed_N_mask.nii.gz" and "my  scan.nii.gz" gave
    "my__scan_mask.nii.gz" (a name cut at 60 characters could end in "_" too). Now the parts
    are joined by single underscores, with none at either end, and each object has its own."""
    session, view = sample
    x, y = lv_pixel(session)[1]
    session, _ = H.click(session, engine, x, y)
    session, _ = H.new_object(session)
    session, view = H.click(session, engine, *organ_pixel(session, RV)[1])
    seed_name = Path(view.downloads[0]).name
    assert seed_name.startswith("synthetic_heart_seed_") and seed_name.endswith("_mask.nii.gz")
    for name, stem in [
        ("my  scan_.nii.gz", "my_scan"),
        ("__x (1)__.nii", "x_1"),
        ("", "volume"),
        ("___.nii.gz", "volume"),
        ("a" * 59 + " b.nii.gz", "a" * 59),
    ]:
        session.name = name
        files = [Path(p).name for p in H.render(session).downloads]
        assert files == [
            f"{stem}_mask.nii.gz",
            *(f"{stem}_object{k}{ext}" for k in (1, 2) for ext in (".glb", ".ply")),
        ], name
