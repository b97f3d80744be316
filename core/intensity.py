"""Intensity normalisation per modality (CT, MR, ultrasound)."""

from __future__ import annotations

import numpy as np

__all__ = ["MODALITIES", "DEFAULT_CT_WINDOW", "normalize_intensity"]

MODALITIES = ("ct", "mr", "us")
DEFAULT_CT_WINDOW = (-1000.0, 2000.0)


def normalize_intensity(
    data: np.ndarray,
    modality: str,
    *,
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
) -> np.ndarray:
    """Map raw intensities to a model-friendly range.

    Parameters
    ----------
    data : (I, J, K) float array, raw values (HU for CT)
    modality : "ct" (clip HU to ``ct_window``, map to [0, 1]), "mr" (z-score over the body,
        i.e. voxels above the 1st percentile, clipped to [-5, 5]) or "us" (0.5th..99.5th
        percentiles mapped to [0, 1], clipped).
    ct_window : (low, high) HU

    Returns
    -------
    (I, J, K) float32 array
    """
    x = np.asarray(data, dtype=np.float32)
    if modality == "ct":
        lo, hi = float(ct_window[0]), float(ct_window[1])
        if not hi > lo:
            raise ValueError(f"CT window must have high > low, got {ct_window}")
        return ((np.clip(x, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if modality == "mr":
        floor = np.percentile(x, 1.0)
        body = x[x > floor]
        if body.size < 10:
            body = x.ravel()
        mean, std = float(body.mean()), float(body.std())
        return np.clip((x - mean) / max(std, 1e-6), -5, 5).astype(np.float32)
    if modality == "us":
        lo, hi = np.percentile(x, [0.5, 99.5])
        return np.clip((x - lo) / max(float(hi - lo), 1e-6), 0, 1).astype(np.float32)
    raise ValueError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
