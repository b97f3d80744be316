"""Pictures people would rather see than read: overlays, comparison grids and per-click Dice
curves (matplotlib Agg).

All functions write a PNG atomically and return its path; none opens a window.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.atomic import atomic_path
from core.geometry import take_slice
from core.intensity import display_window

__all__ = ["overlay_views", "comparison_grid", "click_curves", "AXIS_NAMES"]

# Canonical RAS+ array axes: a slice normal to axis 0 is sagittal, 1 coronal, 2 axial.
AXIS_NAMES = ("sagittal", "coronal", "axial")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _display(img2d: np.ndarray) -> np.ndarray:
    # Rows of a RAS slice run along the first remaining axis; transpose and flip so that
    # "up" on screen is anterior/superior, the usual radiological look.
    return np.flipud(np.asarray(img2d).T)


def _save(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def _centre(mask: np.ndarray, fallback) -> tuple[int, int, int]:
    if mask is not None and mask.any():
        return tuple(int(round(x)) for x in np.argwhere(mask).mean(0))
    return tuple(int(x) for x in fallback)


def overlay_views(
    image: np.ndarray,
    mask: np.ndarray,
    path: str | os.PathLike,
    *,
    point=None,
    title: str = "",
    gt: np.ndarray | None = None,
) -> Path:
    """Three orthogonal slices through ``point`` (default: the mask's centroid) with the mask
    (and the ground truth's outline, if given) overlaid.

    Parameters
    ----------
    image : (I, J, K) intensities
    mask : (I, J, K) bool prediction
    point : (3,) voxel the slices pass through
    gt : (I, J, K) bool ground truth, drawn as a contour
    """
    plt = _plt()
    p = (
        _centre(mask, np.array(image.shape) // 2)
        if point is None
        else tuple(int(round(x)) for x in point)
    )
    lo, hi = display_window(image)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8))
    for ax_i, ax in enumerate(axes):
        idx = int(np.clip(p[ax_i], 0, image.shape[ax_i] - 1))
        ax.imshow(_display(take_slice(image, ax_i, idx)), cmap="gray", vmin=lo, vmax=hi)
        m = _display(take_slice(mask, ax_i, idx))
        ax.imshow(np.ma.masked_where(~m, m), cmap="autumn", alpha=0.45, vmin=0, vmax=1)
        if gt is not None:
            g = _display(take_slice(gt, ax_i, idx)).astype(float)
            if g.any():
                ax.contour(g, levels=[0.5], colors="lime", linewidths=1.0)
        ax.set_title(f"{AXIS_NAMES[ax_i]} {idx}", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def comparison_grid(
    image: np.ndarray,
    gt: np.ndarray,
    pred: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str = "",
) -> Path:
    """Ground truth vs prediction on 3 axes, plus a TP/FP/FN map.

    Rows: sagittal, coronal, axial through the ground truth's centroid. Columns: ground truth,
    prediction, errors (green TP, red FP, blue FN).
    """
    plt = _plt()
    p = _centre(gt, np.array(image.shape) // 2)
    lo, hi = display_window(image)
    fig, axes = plt.subplots(3, 3, figsize=(9, 9))
    for r in range(3):
        idx = int(p[r])
        img = _display(take_slice(image, r, idx))
        g = _display(take_slice(gt, r, idx)).astype(bool)
        q = _display(take_slice(pred, r, idx)).astype(bool)
        for c, (m, name) in enumerate(((g, "ground truth"), (q, "prediction"))):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            ax.imshow(np.ma.masked_where(~m, m), cmap="autumn", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(f"{name}, {AXIS_NAMES[r]} {idx}", fontsize=8)
            ax.axis("off")
        rgb = np.zeros(g.shape + (4,))
        rgb[g & q] = (0.1, 0.8, 0.1, 0.6)
        rgb[~g & q] = (0.9, 0.1, 0.1, 0.7)
        rgb[g & ~q] = (0.1, 0.3, 1.0, 0.7)
        ax = axes[r, 2]
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.imshow(rgb)
        ax.set_title(f"TP green, FP red, FN blue ({AXIS_NAMES[r]})", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def click_curves(
    panels: dict[str, dict[str, list[float]]], path: str | os.PathLike, *, ylabel: str = "mean Dice"
) -> Path:
    """Mean Dice after each click, one panel per setting, one line per model.

    Parameters
    ----------
    panels : {panel title: {line label: [value after click 1, after click 2, ...]}}
    path : the PNG to write
    """
    if not panels or not all(panels.values()):
        raise ValueError("click_curves needs at least one panel, each with at least one line")
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
        for label, values in lines.items():
            clicks = np.arange(1, len(values) + 1)
            ax.plot(clicks, values, marker="o", label=label)
            ax.set_xticks(clicks)
        ax.set_title(title)
        ax.set_xlabel("clicks")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
