"""Viewer-side helpers of Reconstruct that hold no widget state: the 2D/3D view presets, the
box prompt from drawn rectangle corners, and the one-line summary of a result."""

from __future__ import annotations

import numpy as np

__all__ = ["VIEWS", "set_view", "box_from_corners", "result_summary"]

# 2D views (napari dims order: the last two are shown; canonical RAS world axes x, y, z)
# shown the radiological way: patient's right on the screen's left, anterior/superior up.
VIEWS = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}


def set_view(viewer, name: str) -> None:
    """``axial``, ``coronal``, ``sagittal`` (2D, radiological) or ``3D`` (toggles 2D/3D)."""
    dims = viewer.dims
    if name == "3D":
        dims.ndisplay = 3 if dims.ndisplay == 2 else 2
        return
    if dims.ndim < 3:
        return
    dims.ndisplay = 2
    lead = tuple(range(dims.ndim - 3))
    dims.order = lead + tuple(a + len(lead) for a in VIEWS[name])
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
    camera = scene.camera if scene is not None else viewer.camera
    if hasattr(camera, "orientation2d"):  # napari >= 0.6
        camera.orientation2d = ("up", "left")


def box_from_corners(corners, axis: int, shape):
    """A ``core.clicks.Box`` on slice ``axis`` of a volume of ``shape`` from rectangle corners
    in voxel indices (N, 3); ValueError when it is outside the volume or empty."""
    from core.clicks import Box
    from core.geometry import other_axes

    corners = np.asarray(corners, dtype=float)
    r_ax, c_ax = other_axes(axis)
    s = int(np.floor(corners[:, axis].mean() + 0.5))
    if not 0 <= s < shape[axis]:
        raise ValueError("the box is outside the volume")
    r0 = max(int(np.floor(corners[:, r_ax].min() + 0.5)), 0)
    r1 = min(int(np.floor(corners[:, r_ax].max() + 0.5)) + 1, shape[r_ax])
    c0 = max(int(np.floor(corners[:, c_ax].min() + 0.5)), 0)
    c1 = min(int(np.floor(corners[:, c_ax].max() + 0.5)) + 1, shape[c_ax])
    if r1 <= r0 or c1 <= c0:
        raise ValueError("the box is outside the volume or empty")
    return Box(axis, s, r0, c0, r1, c1)


def result_summary(result) -> str:
    """Volume, prompts and time taken of a ``core.engine.Result``, in one line."""
    t = result.timings
    parts = [f"{t.get('total', 0) / 1000:.2f} s"]
    parts.append(f"model {t.get('model', 0) / 1000:.2f} s")
    if "mesh" in t:
        parts.append(f"mesh {t['mesh']:.0f} ms")
    box = " + box" if result.prompts.box is not None else ""
    text = (
        f"{result.volume_ml:.1f} mL from {len(result.prompts.clicks)} click(s){box} in "
        + ", ".join(parts)
    )
    if result.touches_border:
        text += " - larger than the model's field of view: the edge may be cut"
    return text
