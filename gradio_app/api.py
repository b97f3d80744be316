"""The programmatic endpoint (``api_name="reconstruct"``) as a plain function."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.clicks import Click, PromptSet, check_click_in_volume
from core.errors import InputError
from core.modes import INDEX_ORDERS
from core.predict import file_clicks_to_ras
from core.source_grid import SourceGrid, save_mask
from gradio_app.handlers import _check_axis, _check_settings, _choice, _file_name, _read_volume
from gradio_app.session import Settings

if TYPE_CHECKING:
    from gradio_app.service import SharedEngine

__all__ = ["reconstruct_file"]


def _points(value, name: str) -> list[tuple[float, float]]:
    if value is None:
        return []
    try:
        pts = [tuple(float(t) for t in p) for p in value]
    except (TypeError, ValueError):
        pts = None
    if pts is None or any(len(p) != 2 or not all(np.isfinite(p)) for p in pts):
        raise ValueError(f"{name} must be a list of [row, col] pairs of numbers, got {value!r}")
    return pts


def reconstruct_file(
    engine: SharedEngine,
    volume_path,
    *,
    axis,
    slice_index,
    points,
    negative_points=(),
    mode: str = "volume",
    weights: str = "base",
    modality: str = "ct",
    zoom_in: bool = False,
    indices: str = "ras",
    out_dir,
    volume_name: str | None = None,
) -> dict:
    """One reconstruction from a NIfTI file, as ``sam3d predict`` does.

    Points are ``(row, col)`` pixels of ``np.take(volume, slice_index, axis)`` of the volume in
    canonical RAS+ orientation (for a RAS file: its own array order; axis 2 = axial), or with
    ``indices="file"`` of the file's own array (``core.modes.INDEX_ORDERS``).

    Returns
    -------
    dict with ``mask`` (path of a .nii.gz on the input file's own grid and affine, 1 = organ),
    ``mesh`` (path of a .glb in world mm, or None when nothing was found) and ``info``
    (``timings_ms`` per stage, ``passes``, ``voxels``, ``volume_ml``, ``touches_border``,
    ``warnings`` (one-line notes, e.g. values that do not look like the chosen modality),
    ``mode``, ``modality`` (as used: names are taken in any case, "CT" is "ct"), ``zoom_in``, ``indices``, ``adapter``, ``shape`` (the input's), ``wall_ms``).
    """
    from core.mesh import save_mesh

    t0 = time.perf_counter()
    if volume_path is None:
        raise InputError(None, "no volume: send a NIfTI file (.nii or .nii.gz)")
    axis = _check_axis(axis)
    pos, neg = _points(points, "points"), _points(negative_points, "negative_points")
    if not pos:
        raise InputError(None, "give at least one positive point [row, col] on the organ")
    settings = _check_settings(Settings(mode, weights, modality, bool(zoom_in)), engine)
    indices = _choice(indices, INDEX_ORDERS, "indices")
    name = _file_name(volume_path, volume_name)
    volume = _read_volume(volume_path, name)
    grid = SourceGrid.of_file(volume_path)
    try:
        idx = int(slice_index)
        whole = float(slice_index) == idx  # 30.7 is no slice (int() would give 30)
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise ValueError(f"slice_index must be an integer, got {slice_index!r}")
    n = (volume.shape if indices == "ras" else grid.shape)[axis]
    if not 0 <= idx < n:
        raise InputError(name, f"slice {idx} is outside axis {axis} (0..{n - 1})")
    clicks = [Click(axis, idx, r, c, True) for r, c in pos]
    clicks += [Click(axis, idx, r, c, False) for r, c in neg]
    if indices == "file":
        clicks = file_clicks_to_ras(clicks, grid, path=name)
    for c in clicks:
        check_click_in_volume(c, volume.shape, path=name)
    result = engine.predict(
        volume,
        PromptSet(tuple(clicks)),
        weights=settings.weights,
        mode=settings.mode,
        modality=settings.modality,
        zoom_in=settings.zoom_in,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mask = save_mask(result.mask, volume.affine, out / "mask.nii.gz", grid)
    mesh = None if result.mesh is None else save_mesh(result.mesh, out / "mesh.glb")
    info = {
        "timings_ms": dict(result.timings),
        "passes": int(result.passes),
        "voxels": int(result.mask.sum()),
        "volume_ml": round(float(result.volume_ml), 3),
        "touches_border": bool(result.touches_border),
        "warnings": list(result.warnings),
        "mode": settings.mode,
        "modality": settings.modality,
        "zoom_in": settings.zoom_in,
        "indices": indices,
        "adapter": settings.weights,
        "shape": list(grid.shape),
        "wall_ms": round((time.perf_counter() - t0) * 1000.0, 1),
    }
    return {"mask": str(mask), "mesh": None if mesh is None else str(mesh), "info": info}
