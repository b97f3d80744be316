"""What the page does, as plain functions: no gradio in here.

Every handler takes the session (or None for a new one) and plain values, and returns the
session and a :class:`View` (what the page should show). Bad input raises
:class:`core.errors.InputError` or ``ValueError`` with a one-line message; ``gradio_app.app``
turns those into ``gr.Error`` pop-ups. What the page shows is drawn by
:func:`gradio_app.page.render`; the programmatic endpoint is :mod:`gradio_app.api`.

Coordinates: clicks arrive as ``(x, y)`` pixels of the slice picture; :class:`SliceView` maps
them to the ``(row, col)`` of ``take_slice(volume, axis, slice_idx)``, the convention of
:class:`core.clicks.Click`.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from core.clicks import Box, Click, PromptSet, check_click_in_volume
from core.errors import InputError
from core.intensity import MODALITIES
from core.modes import MODES, zoom_in_applies
from core.source_grid import SourceGrid
from gradio_app.page import METRIC_COLUMNS, View, md_escape, render, slice_picture, slice_view
from gradio_app.render import AXIS_NAMES
from gradio_app.session import ObjectState, Session, Settings

if TYPE_CHECKING:
    from gradio_app.service import SharedEngine

__all__ = [
    "TOOLS",
    "MODES",
    "MODALITIES",
    "METRIC_COLUMNS",
    "View",
    "Settings",
    "load_volume",
    "load_labels",
    "load_sample",
    "unload_volume",
    "upload_boxes",
    "show_slice",
    "set_axis",
    "click",
    "undo",
    "new_object",
    "clear",
    "change_settings",
    "render",
    "slice_view",
]

TOOLS = ("positive", "negative", "box")
#: What the page says with no volume loaded.
START_STATUS = "Load a volume or the synthetic heart to start."

# --------------------------------------------------------------------------------------------
# inputs


def _named(exc: InputError, name: str) -> InputError:
    """The same problem, naming the file the user knows (not gradio's temporary path)."""
    return InputError(name, exc.problem)


def _file_name(path, name: str | None = None) -> str:
    return name or Path(os.fspath(path)).name


def _read_volume(path, name: str):
    from core.io import Volume, load_image

    try:
        v = load_image(path)
    except InputError as exc:
        raise _named(exc, name) from None
    return Volume(v.data, v.affine, name)


def load_volume(
    session: Session | None,
    volume_path,
    label_path=None,
    *,
    root=None,
    volume_name: str | None = None,
    label_name: str | None = None,
) -> tuple[Session, View]:
    """Load an uploaded NIfTI volume (and optionally its labels); starts afresh.

    All or nothing: both files are read and checked before the session changes, so a bad
    label map leaves the session (and the page) on the volume and objects it had.
    """
    if volume_path is None:
        raise InputError(None, "choose a NIfTI volume (.nii or .nii.gz) to upload")
    name = _file_name(volume_path, volume_name)
    volume = _read_volume(volume_path, name)
    grid = SourceGrid.of_file(volume_path)
    gt = None if label_path is None else _read_labels(label_path, label_name, volume)
    session = session if session is not None and not session.closed else Session(root)
    session.set_volume(volume, name, grid, file=volume_path)
    if gt is not None:
        session.set_gt(*gt, file=label_path)
    return session, render(session, status=_loaded_status(session))


def _read_labels(label_path, label_name: str | None, volume):
    """The label map, checked against ``volume`` (same grid, some foreground), with its
    classes' names and their bounding boxes (one pass over the map for both:
    ``core.labelmap.class_boxes``)."""
    from core.io import LabelVolume, check_same_grid, load_label
    from core.labelmap import class_boxes

    name = _file_name(label_path, label_name)
    try:
        lab = load_label(label_path)
    except InputError as exc:
        raise _named(exc, name) from None
    lab = LabelVolume(lab.data, lab.affine, name)
    check_same_grid(volume, lab)  # names both files on a shape or affine mismatch
    boxes = class_boxes(lab.data)  # load_label gives unsigned integers: never None
    if not boxes:
        raise InputError(name, "label map is empty (no foreground voxels)")
    return lab, _label_names(name, sorted(boxes)), boxes


def _label_names(name: str, values: list[int]) -> dict[int, str]:
    """Names for the classes ``values`` of an uploaded label map, after its file as the user
    named it (``name``, without .nii/.nii.gz): "liver" for the one class of liver.nii.gz, and
    "seg 1", "seg 2" for the classes 1 and 2 of seg.nii.gz (the values tell them apart)."""
    from core.io import strip_nifti_suffix

    stem = strip_nifti_suffix(name) or name
    if len(values) == 1:
        return {values[0]: stem}
    return {v: f"{stem} {v}" for v in values}


def load_labels(
    session: Session | None, label_path, *, label_name: str | None = None
) -> tuple[Session, View]:
    """Load (or with None, drop) the ground-truth label map of the loaded volume."""
    if session is None or session.volume is None:
        raise InputError(None, "load the volume first, then its ground-truth labels")
    if label_path is None:
        session.set_gt(None)
        return session, render(session, status="Ground truth removed.")
    session.set_gt(*_read_labels(label_path, label_name, session.volume), file=label_path)
    return session, render(session, status=_loaded_status(session))


def unload_volume(session: Session | None) -> tuple[Session | None, View]:
    """The volume's upload box cleared: the volume, its ground truth and objects go, and the
    page is back at its start (a click then asks for a volume)."""
    if session is not None and not session.closed:
        session.unload()
    return session, View(status=START_STATUS)


def upload_boxes(session: Session | None) -> tuple[str | None, str | None]:
    """What the volume and label upload boxes should hold: the uploaded files the session has
    loaded; None for none, for the sample (no upload), or for a file gradio has since deleted.
    After a failed upload the boxes so show what is loaded, not the file that failed."""
    if session is None or session.closed:
        return None, None
    files = (session.volume_file, session.label_file)
    return tuple(p if p is not None and os.path.isfile(p) else None for p in files)


def load_sample(session: Session | None, seed: int | None = None, *, root=None):
    """The built-in sample: a synthetic cardiac CT (never seen in training) with its labels."""
    from core.io import LabelVolume, Volume
    from core.predict import DEMO_SEED
    from core.synthetic import HEART_LABELS, make_heart_phantom

    seed = DEMO_SEED if seed is None else int(seed)
    if seed < 0:
        raise ValueError(f"the sample seed must be >= 0, got {seed}")
    image, label = make_heart_phantom(seed)
    name = f"synthetic heart (seed {seed})"
    session = session if session is not None and not session.closed else Session(root)
    session.set_volume(Volume(image.data, image.affine, name), name, None)
    session.set_gt(LabelVolume(label.data, label.affine, f"{name} labels"), HEART_LABELS)
    status = _loaded_status(session) + (
        " Click a chamber on the slice (the green outlines are the ground truth)."
    )
    return session, render(session, status=status)


def _loaded_status(s: Session) -> str:
    v = s.volume
    sp = " x ".join(f"{x:.3g}" for x in v.spacing)
    text = f"Loaded **{md_escape(s.name)}**: {v.shape[0]} x {v.shape[1]} x {v.shape[2]} voxels of {sp} mm."
    if s.gt is not None:
        names = ", ".join(md_escape(s.class_name(k)) for k in s.gt_classes)
        text += f" Ground truth: {names}."
    return text


# --------------------------------------------------------------------------------------------
# slices


def _need_volume(session: Session | None) -> Session:
    if session is None or session.volume is None:
        raise InputError(None, "load a NIfTI volume or the synthetic sample first")
    return session


def _check_axis(axis) -> int:
    if isinstance(axis, str) and axis.strip().lower() in AXIS_NAMES:
        return AXIS_NAMES.index(axis.strip().lower())
    try:
        a = int(axis)
    except (TypeError, ValueError):
        a = -1
    if a not in (0, 1, 2) or (not isinstance(axis, str) and float(axis) != a):
        raise ValueError(f"axis must be 0, 1 or 2 (sagittal, coronal, axial), got {axis!r}")
    return a


def set_axis(session: Session | None, axis) -> tuple[Session, View]:
    """Show the middle slice of another axis."""
    s = _need_volume(session)
    s.axis = _check_axis(axis)
    s.slice_idx = s.volume.shape[s.axis] // 2
    s.corner = None
    return s, render(s, files=False)


def show_slice(session: Session | None, slice_idx) -> tuple[Session, View]:
    """Show another slice of the current axis (only the slice picture changes)."""
    s = _need_volume(session)
    n = s.volume.shape[s.axis]
    idx = int(round(float(slice_idx)))
    if not 0 <= idx < n:
        raise ValueError(f"slice {idx} is outside axis {s.axis} (0..{n - 1})")
    if idx != s.slice_idx:
        s.corner = None
    s.slice_idx = idx
    return s, View(
        slice_image=slice_picture(s),
        axis=s.axis,
        slice_idx=idx,
        n_slices=n,
        has_gt=s.gt is not None,
    )


# --------------------------------------------------------------------------------------------
# prompts and reconstruction


def _choice(value, choices: tuple[str, ...], what: str) -> str:
    """``value`` as one of ``choices`` whatever its case ("CT" and " Ct" are "ct"), or a
    one-line ValueError naming the choices."""
    key = value.strip().lower() if isinstance(value, str) else value
    if key not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return key


def _check_settings(settings: Settings, engine: SharedEngine) -> Settings:
    mode = _choice(settings.mode, MODES, "mode")
    # where zoom-in changes nothing (slice mode) it is off, so ticking it there redoes nothing
    return replace(
        settings,
        mode=mode,
        modality=_choice(settings.modality, MODALITIES, "modality"),
        weights=engine.check_weights(settings.weights),
        zoom_in=bool(settings.zoom_in) and zoom_in_applies(mode),
    )


def click(
    session: Session | None,
    engine: SharedEngine,
    x,
    y,
    *,
    tool: str = "positive",
    settings: Settings | None = None,
) -> tuple[Session, View]:
    """A click at pixel ``(x, y)`` of the slice picture.

    ``tool`` "positive" / "negative" adds a point to the current object and reconstructs it
    (refining the previous result); "box" takes two clicks, the box's corners.
    """
    s = _need_volume(session)
    if tool not in TOOLS:
        raise ValueError(f"tool must be one of {', '.join(TOOLS)}, got {tool!r}")
    settings = _check_settings(settings or Settings(), engine)
    row, col = slice_view(s).pixel_to_rc(x, y)
    c = Click(s.axis, s.slice_idx, row, col, tool != "negative")
    check_click_in_volume(c, s.volume.shape, path=s.name)
    obj = s.current
    prompts = obj.prompts or PromptSet()
    if tool == "box":
        if s.corner is None or s.corner[:2] != (s.axis, s.slice_idx):
            s.corner = (s.axis, s.slice_idx, row, col)
            return s, render(
                s, status="Box: first corner set; click the opposite corner.", files=False
            )
        _, _, r0, c0 = s.corner
        s.corner = None
        box = Box(
            s.axis, s.slice_idx, min(r0, row), min(c0, col), max(r0, row) + 1, max(c0, col) + 1
        )
        prompts = replace(prompts, box=box)
    else:
        s.corner = None
        if not c.positive and not (prompts.positives or prompts.box is not None):
            raise InputError(
                None,
                "a negative point needs a positive point or a box first (it says what the "
                "organ is not)",
            )
        prompts = prompts.add(c)
    return s, _reconstruct(s, engine, obj, prompts, settings, refine=True)


def _reconstruct(s, engine, obj: ObjectState, prompts, settings, *, refine: bool) -> View:
    t0 = time.perf_counter()
    previous = obj.result if refine and obj.settings == settings else None
    result = _predict(engine, s.volume, prompts, settings, previous)
    obj.push(prompts, result, settings)
    return render(s, started=t0)


def undo(
    session: Session | None,
    engine: SharedEngine | None = None,
    settings: Settings | None = None,
) -> tuple[Session, View]:
    """Undo the last box corner, click, "new object" or "clear".

    With ``engine`` and ``settings`` (the page's), a restored result made with other settings
    (they changed since that click) is redone with the page's, so the page never shows an
    object made in another mode or with other weights than it says.
    """
    s = _need_volume(session)
    if s.corner is not None:
        s.corner = None
        return s, render(s, status="Box corner removed.")
    if s.current.pop():
        obj = s.current
        if engine is not None and settings is not None and obj.n_prompts:
            settings = _check_settings(settings, engine)
            if obj.settings != settings:
                obj.redo(_predict(engine, s.volume, obj.prompts, settings), settings)
        return s, render(s, status="Last prompt undone.")
    if len(s.objects) > 1:
        s.objects.pop()
        return s, render(s, status=f"Back to object {len(s.objects)}.")
    if s.restore_cleared():
        if engine is not None and settings is not None:
            _redo_all(s, engine, _check_settings(settings, engine))
        n = sum(1 for o in s.objects if o.n_prompts)
        return s, render(s, status=f"Clear undone: {n} object{'s' if n > 1 else ''} back.")
    return s, render(s, status="Nothing to undo.")


def new_object(session: Session | None) -> tuple[Session, View]:
    """Keep the current object and start another one (its clicks no longer refine it)."""
    s = _need_volume(session)
    s.corner = None
    if s.current.n_prompts:
        s.objects.append(ObjectState())
    return s, render(s, status=f"Object {len(s.objects)}: click the next structure.")


def clear(session: Session | None) -> tuple[Session, View]:
    """Remove every object and prompt (Undo brings them back)."""
    s = _need_volume(session)
    cleared = s.clear_objects()
    return s, render(s, status="Cleared (Undo brings it back)." if cleared else "Cleared.")


def _predict(engine, volume, prompts, settings: Settings, previous=None):
    return engine.predict(
        volume,
        prompts,
        weights=settings.weights,
        mode=settings.mode,
        modality=settings.modality,
        previous=previous,
        zoom_in=settings.zoom_in,
    )


def change_settings(
    session: Session | None, engine: SharedEngine, settings: Settings
) -> tuple[Session | None, View | None]:
    """Redo every object made with other settings (mode, weights, modality, zoom-in) from its
    prompts."""
    if session is None or session.volume is None:
        return session, None
    settings = _check_settings(settings, engine)
    t0 = time.perf_counter()
    redone = _redo_all(session, engine, settings)
    if not redone:
        return session, render(session, status="Settings will apply to the next click.")
    return session, render(session, started=t0, redone=redone)


def _redo_all(session: Session, engine: SharedEngine, settings: Settings) -> int:
    """Redo every object made with other settings than ``settings``; how many were."""
    redone = 0
    for obj in session.objects:
        if obj.prompts is not None and not obj.prompts.is_empty and obj.settings != settings:
            obj.redo(_predict(engine, session.volume, obj.prompts, settings), settings)
            redone += 1
    return redone
