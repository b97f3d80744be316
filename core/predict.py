"""``sam3d predict`` and ``sam3d demo``: one reconstruction written to a folder.

Outputs: ``mask.nii.gz`` (the input's grid and affine), ``mesh.glb`` and ``mesh.ply`` (the
same vertices, world mm of the input's affine, RAS+; see :func:`core.mesh.save_mesh`),
``preview.png`` (three orthogonal slices with the mask), ``timings.json`` (ms per stage).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.atomic import make_output_dir, write_json
from core.clicks import Click, PromptSet, first_click
from core.datasets import declared_modality, resolve_modality
from core.errors import InputError
from core.io import Volume, load_image
from core.modes import check_index_order
from core.source_grid import SourceGrid, save_mask

__all__ = ["file_clicks_to_ras", "parse_point", "predict_to_folder", "run_demo", "DEMO_SEED"]

# The demo's heart is drawn from a seed the training data never uses (training sets use
# seeds 0.. and the test set 1000..).
DEMO_SEED = 424242


def file_clicks_to_ras(clicks, grid: SourceGrid, *, path=None) -> list[Click]:
    """Clicks given in a file's own array order, on its canonical RAS+ grid (the same voxels).

    Raises :class:`InputError` naming ``path`` for a click outside the file's array (checked in
    the indices the user gave, so the message shows them)."""
    from core.clicks import check_click_in_volume
    from core.orient import CanonicalFrame

    for c in clicks:
        check_click_in_volume(c, grid.shape, path=path)
    frame = CanonicalFrame.of(grid.affine, grid.shape)
    return list(clicks) if frame is None else [frame.click(c) for c in clicks]


def parse_point(text: str) -> tuple[float, float]:
    """``"ROW,COL"`` -> (row, col); a clear ValueError otherwise."""
    try:
        r, c = (float(x) for x in text.split(","))
    except ValueError as exc:
        raise ValueError(f"expected ROW,COL (e.g. 31,28), got {text!r}") from exc
    return r, c


def write_outputs(
    result,
    volume: Volume,
    out_dir: Path,
    *,
    gt: np.ndarray | None = None,
    extra: dict | None = None,
    grid: SourceGrid | None = None,
) -> dict:
    """Write a Result's files; returns the paths.

    ``grid``: the input file's own grid; ``mask.nii.gz`` then has exactly its shape, array
    order and affine (the engine works on the canonical RAS+ ``volume``)."""
    from core.mesh import save_mesh
    from core.viz import overlay_views

    make_output_dir(out_dir)
    paths = {"mask": save_mask(result.mask, volume.affine, out_dir / "mask.nii.gz", grid)}
    for suffix in ("glb", "ply"):
        mesh_path = out_dir / f"mesh.{suffix}"
        if result.mesh is not None:
            paths[f"mesh_{suffix}"] = save_mesh(result.mesh, mesh_path)
        else:  # no surface: an earlier run's mesh in this folder would contradict the mask
            mesh_path.unlink(missing_ok=True)
    click = result.prompts.positives[0].voxel() if result.prompts.positives else None
    paths["preview"] = overlay_views(
        volume.data,
        result.mask,
        out_dir / "preview.png",
        point=click,
        gt=gt,
        title=f"{result.mode} mode, {result.passes} pass(es), {result.timings['total']:.0f} ms",
    )
    info = {
        "timings_ms": result.timings,
        "passes": result.passes,
        "mode": result.mode,
        "touches_border": result.touches_border,
        "warnings": list(result.warnings),
        "volume_ml": result.volume_ml,
        "cube_spacing_mm": result.cube.spacing,
        **(extra or {}),
    }
    paths["timings"] = write_json(out_dir / "timings.json", info)
    return {k: str(v) for k, v in paths.items()}


def predict_to_folder(
    volume_path: str | os.PathLike,
    *,
    axis: int,
    slice_idx: int,
    points: list[tuple[float, float]],
    negatives: list[tuple[float, float]] = (),
    out_dir: str | os.PathLike,
    mode: str = "volume",
    checkpoint=None,
    adapter=None,
    modality: str | None = None,
    ct_window=None,
    zoom_in: bool = False,
    indices: str = "ras",
    on_warning=None,
) -> dict:
    """Load a volume, reconstruct from clicks on one slice, write the outputs.

    ``zoom_in``: the engine's optional zoom-in on small organs (volume mode;
    :class:`core.engine.CubePolicy`). ``indices``: what ``axis``, ``slice_idx`` and the points
    index, ``"ras"`` (the volume turned to RAS+) or ``"file"`` (the file's own array order);
    one of :data:`core.modes.INDEX_ORDERS`. ``modality``: None takes the one the volume's dataset
    declares (``dataset.json`` beside its image folder, e.g. nnU-Net's ``imagesTr/``), else CT.
    ``ct_window``: (low, high) HU; None takes the adapter's training window, else the default.
    ``on_warning(text)`` receives each of the result's warnings (they are also in
    ``timings.json``)."""
    from dataclasses import asdict

    from core.engine import CubePolicy, Reconstructor

    if not points:
        raise ValueError("give at least one --point ROW,COL on the structure")
    check_index_order(indices)
    make_output_dir(out_dir)  # a file in the way fails here, before any work
    volume = load_image(volume_path)
    grid = SourceGrid.of_file(volume_path)
    clicks = [Click(axis, slice_idx, r, c, True) for r, c in points]
    clicks += [Click(axis, slice_idx, r, c, False) for r, c in negatives]
    if indices == "file":
        clicks = file_clicks_to_ras(clicks, grid, path=volume_path)
    modality, note = resolve_modality(
        modality, declared_modality(volume_path), source=str(Path(volume_path).parent.parent)
    )
    rec = Reconstructor.from_pretrained(checkpoint, adapter, policy=CubePolicy(zoom_in=zoom_in))
    result = rec.predict(
        volume, PromptSet(tuple(clicks)), mode=mode, modality=modality, ct_window=ct_window
    )
    if on_warning:
        for text in ([note] if note else []) + list(result.warnings):
            on_warning(f"{volume_path}: {text}")
    extra = {
        "weights": rec.name,
        "modality": modality,
        "ct_window": list(rec.ct_window_for(ct_window)) if modality == "ct" else None,
        "cube_policy": asdict(rec.policy),
        "indices": indices,
    }
    return write_outputs(result, volume, Path(out_dir), extra=extra, grid=grid)


def run_demo(
    out_dir: str | os.PathLike, *, mode: str = "volume", checkpoint=None, class_id: int = 2
) -> dict:
    """The main job on built-in data: a synthetic heart the model never saw, one click on the
    left ventricle (class 2) on the axial slice through its centre, the 3D result written to
    ``out_dir`` with its Dice against the ground truth."""
    from core.engine import Reconstructor
    from core.io import save_image, save_label
    from core.metrics import dice
    from core.synthetic import HEART_LABELS, make_heart_phantom

    out = make_output_dir(out_dir)
    image, label = make_heart_phantom(DEMO_SEED)
    save_image(image, out / "heart-image.nii.gz")
    save_label(label, out / "heart-label.nii.gz")
    gt = label.data == class_id
    if not gt.any():
        raise InputError(out, f"demo heart has no class {class_id}")
    click = first_click(gt)
    rec = Reconstructor.from_pretrained(checkpoint)
    result = rec.predict(image, PromptSet((click,)), mode=mode)
    d = float(dice(result.mask, gt))
    paths = write_outputs(
        result,
        image,
        out,
        gt=gt,
        extra={
            "click": {
                "axis": click.axis,
                "slice": click.slice_idx,
                "row": click.row,
                "col": click.col,
            },
            "structure": HEART_LABELS[class_id],
            "dice": d,
        },
    )
    return {
        "dice": d,
        "click": click,
        "structure": HEART_LABELS[class_id],
        "timings": result.timings,
        "paths": paths,
    }
