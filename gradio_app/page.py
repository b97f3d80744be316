"""What the page shows for a session: the :class:`View` every handler returns.

:func:`render` draws the slice with its overlays, writes the 3D scenes and the downloads into
a fresh folder of the session, and, with ground truth, computes the metrics table and the
ground truth vs prediction pictures.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.geometry import take_slice
from core.source_grid import save_mask
from gradio_app.render import (
    SliceView,
    colour_of,
    comparison_panels,
    orthogonal_views,
    render_slice,
    save_scene_glb,
)
from gradio_app.session import Session, SessionClosed

__all__ = ["METRIC_COLUMNS", "View", "render", "slice_view", "slice_picture", "md_escape"]

METRIC_COLUMNS = (
    "object",
    "structure",
    "Dice",
    "HD95 (mm)",
    "ASSD (mm)",
    "surface Dice (1 mm)",
    "Chamfer (mm)",
    "predicted (ml)",
    "ground truth (ml)",
)
SURFACE_TOLERANCE_MM = 1.0  # as `sam3d eval`


@dataclass
class View:
    """What the page shows after a handler ran.

    Attributes
    ----------
    slice_image : (H, W, 3) uint8, the slice with masks, ground-truth outlines and clicks
    axis, slice_idx, n_slices : the slice on screen and the slider's range
    scene : .glb of every object's surface (coloured), for ``gr.Model3D``
    views : (h, w, 3) uint8, sagittal/coronal/axial through the current object
    status : markdown: what was done, the time taken, warnings
    metrics : rows of :data:`METRIC_COLUMNS` (with ground truth)
    compare : (h, w, 3) uint8, ground truth vs prediction on three axes (with ground truth)
    gt_scene : .glb of the ground-truth structures the objects stand for
    camera_mm : camera distance (mm) for showing the prediction and ground-truth scenes at
        the same scale (each 3D view otherwise frames its own model)
    downloads : the mask (.nii.gz on the input's grid) and one .glb and .ply per object
    has_gt : ground truth is loaded
    timings : the last reconstruction's engine timings (ms) and the handler's ``wall``
    """

    slice_image: np.ndarray | None = None
    axis: int = 2
    slice_idx: int = 0
    n_slices: int = 1
    scene: str | None = None
    views: np.ndarray | None = None
    status: str = ""
    metrics: list = field(default_factory=list)
    compare: np.ndarray | None = None
    gt_scene: str | None = None
    camera_mm: float | None = None
    downloads: list = field(default_factory=list)
    has_gt: bool = False
    timings: dict = field(default_factory=dict)


def md_escape(text: str) -> str:
    """Text safe inside markdown/HTML (file names come from users)."""
    import html

    return html.escape(str(text)).replace("*", "\\*").replace("_", "\\_")


def slice_view(session: Session) -> SliceView:
    v = session.volume
    return SliceView.for_volume(v.shape, v.spacing, session.axis)


def slice_picture(s: Session, show_gt: bool = True) -> np.ndarray:
    v, axis, idx = s.volume, s.axis, s.slice_idx
    masks, points, boxes = [], [], []
    for i, o in enumerate(s.objects):
        if o.result is not None and o.result.mask.any():
            masks.append((take_slice(o.result.mask, axis, idx), colour_of(i)))
        if o.prompts is None:
            continue
        points += [
            (c.row, c.col, c.positive)
            for c in o.prompts.clicks
            if (c.axis, c.slice_idx) == (axis, idx)
        ]
        b = o.prompts.box
        if b is not None and (b.axis, b.slice_idx) == (axis, idx):
            boxes.append(b.rc)
    corner = None
    if s.corner is not None and s.corner[:2] == (axis, idx):
        corner = s.corner[2:]
    gt2d = take_slice(s.gt.data, axis, idx) if (s.gt is not None and show_gt) else None
    return render_slice(
        slice_view(s),
        take_slice(v.data, axis, idx),
        s.window,
        masks=masks,
        gt2d=gt2d,
        points=points,
        boxes=boxes,
        corner=corner,
    )


def render(
    s: Session,
    *,
    status: str | None = None,
    started: float | None = None,
    redone: int = 0,
    files: bool = True,
) -> View:
    """Everything the page shows for the session's current state.

    ``files`` False skips the 3D scenes and downloads (slice changes only). A session that
    closes meanwhile (its tab closed; its state and folder go) raises :class:`SessionClosed`,
    and what was written after its folder went is removed again.
    """
    try:
        view = _draw(s, status, started, redone, files)
        if not s.closed:
            return view
        cause = None
    except Exception as exc:
        if not s.closed:
            raise
        cause = exc
    shutil.rmtree(s.dir, ignore_errors=True)  # the writes made the removed folder again
    raise SessionClosed("the session closed while the page was drawn") from cause


def _draw(s: Session, status, started, redone: int, files: bool) -> View:
    v = s.volume
    view = View(
        slice_image=slice_picture(s),
        axis=s.axis,
        slice_idx=s.slice_idx,
        n_slices=v.shape[s.axis],
        has_gt=s.gt is not None,
    )
    done = s.done
    overlap_note = ""
    if files:
        out = s.step_dir()
        colours = {i: colour_of(i) for i, _ in done}
        masks = [(o.result.mask, colours[i]) for i, o in done]
        if done:
            scene = save_scene_glb(
                [(o.result.mesh, colours[i]) for i, o in done], out / "prediction.glb"
            )
            view.scene = None if scene is None else str(scene)
            view.downloads, overlap_note = _write_downloads(s, done, out)
        view.views = orthogonal_views(
            v.data,
            v.spacing,
            s.window,
            _focus(s),
            masks=masks,
            gt=None if s.gt is None else s.gt.data,
        )
        if s.gt is not None and done:
            view.metrics, view.compare, view.gt_scene, gt_meshes = _ground_truth_outputs(
                s, done, out
            )
            view.camera_mm = _camera_distance([o.result.mesh for _, o in done] + gt_meshes)
    last = (
        s.current.result if s.current.result is not None else (done[-1][1].result if done else None)
    )
    if last is not None:
        view.timings = dict(last.timings)
    if started is not None:
        view.timings["wall"] = round((time.perf_counter() - started) * 1000.0, 1)
    view.status = status if status is not None else _status(s, view, redone)
    if overlap_note:  # every rewrite of the label map says what it kept, whatever the step
        view.status += f"\n\n{overlap_note}"
    return view


def _focus(s: Session) -> np.ndarray:
    """The voxel the three views pass through: the current object's last click, else the
    centre of the latest object, else the slice on screen."""
    for o in reversed(s.objects):
        if o.prompts is not None and o.prompts.clicks:
            return o.prompts.clicks[-1].voxel()
        if o.result is not None and o.result.mask.any():
            return np.argwhere(o.result.mask).mean(0)
    p = np.array(s.volume.shape, dtype=float) / 2
    p[s.axis] = s.slice_idx
    return p


def _status(s: Session, view: View, redone: int) -> str:
    obj, k = s.current, len(s.objects)
    if obj.result is None:
        return f"Object {k}: click the structure on the slice."
    r, st = obj.result, obj.settings
    pos = len(obj.prompts.positives)
    neg = len(obj.prompts.negatives)
    prompts = f"{pos} positive, {neg} negative" + (", box" if obj.prompts.box else "")
    t = r.timings
    parts = [
        f"**Object {k}** ({prompts}) · {st.mode} mode"
        + (" with zoom-in" if st.zoom_in else "")  # off where it does not apply
        + f" · {st.weights} weights",
        f"reconstruction **{t['total']:.0f} ms** (model {t.get('model', 0):.0f} ms in "
        f"{r.passes} pass{'es' if r.passes > 1 else ''}, mesh {t.get('mesh', 0):.0f} ms)",
    ]
    if "wall" in view.timings:
        parts.append(f"page updated in {view.timings['wall']:.0f} ms")
    text = " · ".join(parts)
    if redone:
        text = f"Redone {redone} object(s) with the new settings. " + text
    if not r.mask.any():
        text += "\n\n**Nothing was found at this click**: try a click nearer the organ's centre."
    else:
        text += f" · {r.volume_ml:.1f} ml"
    if r.touches_border:
        text += (
            "\n\n*The structure may continue beyond what the model could see (it touches its "
            "field of view): check the edges.*"
        )
    for note in r.warnings:
        text += f"\n\n**Check the modality**: {note}."
    return text


def _write_downloads(s: Session, done, out: Path) -> tuple[list[str], str]:
    """The label map (object k as class k) and one mesh per object; and a note on the voxels
    two objects both claim ("" when none). Objects go in in click order and, as napari's
    default, never overwrite: a voxel stays with the earlier object. Each mesh is its
    object's whole result."""
    from core.labelmap import commit_block
    from core.mesh import save_mesh

    # Fortran order, as NIfTI stores voxels: the file is written without reordering them
    dtype = np.uint8 if len(s.objects) < 256 else np.uint16
    labels = np.zeros(s.volume.shape, dtype=dtype, order="F")
    kept = []
    for i, o in done:  # each object writes only its bounding box
        box, values, report = commit_block(labels, o.result.mask, i + 1, overwrite=False)
        if box is not None:
            labels[box] = values
        if report.clashes:
            earlier = ", ".join(str(c) for c in report.clash_classes)
            kept.append(f"{report.clashes} voxels of object {i + 1} stay with object {earlier}")
    stem = _safe_stem(s.name)
    paths = [save_mask(labels, s.volume.affine, out / f"{stem}_mask.nii.gz", s.grid)]
    for i, o in done:
        if o.result.mesh is not None:  # .glb for viewers, .ply for 3D Slicer (SPACE=RAS)
            for ext in (".glb", ".ply"):
                paths.append(save_mesh(o.result.mesh, out / f"{stem}_object{i + 1}{ext}"))
    note = f"Objects overlap; in the label map {'; '.join(kept)}." if kept else ""
    return [str(p) for p in paths], note


def _safe_stem(name: str) -> str:
    """The volume's name as the downloads' stem: its letters, digits and ``-``, the rest as
    single underscores, none at either end ("my scan (2).nii.gz": "my_scan_2"); at most 60
    characters; "volume" when nothing is left."""
    from core.atomic import safe_name
    from core.io import strip_nifti_suffix

    return safe_name(strip_nifti_suffix(name) or name)[:60].rstrip("_") or "volume"


def _ground_truth_outputs(s: Session, done, out: Path):
    from core.geometry import mask_block
    from core.io import voxel_volume_mm3
    from core.mesh import mask_to_mesh

    v, spacing = s.volume, s.volume.spacing
    ml = voxel_volume_mm3(v.affine) / 1000.0
    rows, gt_meshes, compare = [], [], None
    matched = {i: s.gt_class_at(o) for i, o in done}
    for i, o in done:
        cls = matched[i]
        cached = s.metric_rows.get(i)
        if cached is not None and cached[0] is o.result and cached[1] == cls:
            rows.append(cached[2])
        elif cls is None:
            rows.append(
                [i + 1, "(no ground truth here)", *[None] * 5, round(o.result.volume_ml, 2), None]
            )
        else:
            rows.append(_metrics_row(s, i, o.result, cls, mask_block(o.result.mask), ml))
        s.metric_rows[i] = (o.result, cls, rows[-1])
        if cls is not None and cls not in [c for c, _ in gt_meshes]:
            if cls not in s.gt_meshes:
                box = s.gt_stats(cls).box
                s.gt_meshes[cls] = mask_to_mesh(
                    s.gt.data[box] == cls,
                    v.affine,
                    smooth_iterations=10,
                    origin=[b.start for b in box],
                )
            gt_meshes.append((cls, (s.gt_meshes[cls], colour_of(i))))
    # the comparison shows the current object, else the latest one with a ground truth
    for i, o in reversed(done):
        if matched[i] is not None:
            compare = comparison_panels(
                v.data,
                spacing,
                s.window,
                s.gt.data,
                o.result.mask,
                colour_of(i),
                gt_value=matched[i],
                centre=s.gt_stats(matched[i]).centre,
            )
            break
    scene = save_scene_glb([m for _, m in gt_meshes], out / "ground_truth.glb")
    return rows, compare, None if scene is None else str(scene), [m for (_, (m, _)) in gt_meshes]


def _metrics_row(s: Session, i: int, result, cls: int, pred_box, ml: float) -> list:
    """An object's row of the metrics table against ground-truth class ``cls``, computed on
    the union of the two bounding boxes grown by a voxel (both masks are empty outside it):
    bitwise the whole volume's numbers, without passes over it."""
    from core.labelmap import grow_box, union_box
    from core.metrics import binary_metrics

    gt = s.gt_stats(cls)
    box = grow_box(union_box(gt.box, pred_box), s.gt.data.shape)
    m = binary_metrics(
        result.mask[box],
        s.gt.data[box] == cls,
        spacing=s.volume.spacing,
        tolerance_mm=SURFACE_TOLERANCE_MM,
        volume_shape=s.gt.data.shape,
    )
    return [
        i + 1,
        s.class_name(cls),
        round(m["dice"], 3),
        _r(m["hd95"]),
        _r(m["assd"]),
        round(m["surface_dice"], 3),
        _r(m["chamfer"]),
        round(result.volume_ml, 2),
        round(gt.count * ml, 2),
    ]


def _camera_distance(meshes) -> float | None:
    """A camera distance (mm) that fits every mesh: 1.3 x the diagonal of their union."""
    bounds = [m.bounds() for m in meshes if m is not None]
    if not bounds:
        return None
    lo = np.min([b[0] for b in bounds], axis=0)
    hi = np.max([b[1] for b in bounds], axis=0)
    return round(1.3 * float(np.linalg.norm(hi - lo)), 1)


def _r(x: float) -> float | None:
    return round(float(x), 2) if np.isfinite(x) else None
