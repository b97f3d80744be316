"""Intensity normalisation per modality (CT, MR, ultrasound), and a check that the chosen
modality fits the data.

The shipped base was trained on synthetic CT only, in the default CT window, where body tissue
(fat to contrast-enhanced blood) lies between about 0.3 and 0.5 and bone above. MR and
ultrasound have no physical unit, so they are scaled by percentiles into that same range: the
0.5th..99.5th percentiles map to ``[0, 0.5]``. A base without an MR adapter then still finds
organs on MR (mean Dice 0.17 on the abdominal MR example in ``../shared/data``, where a z-score
gave 0.00: every mask empty), and the same scaling of a CT gives what its HU window does
(0.30 against 0.29 on the abdominal CT example); see BENCHMARKS.md.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MODALITIES",
    "DEFAULT_CT_WINDOW",
    "display_window",
    "PERCENTILES",
    "PERCENTILE_TOP",
    "WindowedCT",
    "intensity_rule",
    "intensity_warning",
    "normalize_intensity",
]

MODALITIES = ("ct", "mr", "us")
DEFAULT_CT_WINDOW = (-1000.0, 2000.0)
PERCENTILES = (0.5, 99.5)
PERCENTILE_TOP = 0.5  # where the upper percentile lands (CT tissue's range in the default window)
# A CT in Hounsfield units holds air (-1000) or at least fat (about -100) somewhere...
_CT_LOWEST_HU = -100.0
# ...unless it is a crop inside the body: soft tissue (about 30-80 HU) and the scanner's
# noise, which reaches below water's 0 HU, with nothing as bright as bone. Values from at most
# -20 up to somewhere in 30..400 count as such a crop; magnitude MR, 8-bit images and raw
# scanner values are never below zero, a z-score or 0..1 scale spans a few units, and an MR
# resampled below zero at its edges runs far above 400 (the abdominal MR example: -47..833).
_SOFT_TISSUE_HU = (-20.0, 30.0, 400.0)


def intensity_rule(modality: str, ct_window=DEFAULT_CT_WINDOW) -> str:
    """One line saying how ``modality`` is normalised (recorded with preprocessed caches, so a
    cache made under another rule is redone rather than mixed in)."""
    if modality == "ct":
        lo, hi = (float(x) for x in ct_window)
        return f"ct: clip to [{lo:g}, {hi:g}] HU, map to [0, 1]"
    if modality in ("mr", "us"):
        return (
            f"{modality}: percentiles {PERCENTILES[0]:g}..{PERCENTILES[1]:g} map to "
            f"[0, {PERCENTILE_TOP:g}], clip to [0, 1]"
        )
    raise ValueError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")


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
    modality : "ct" (clip HU to ``ct_window``, map to [0, 1]); "mr" or "us" (the 0.5th and
        99.5th percentiles map to 0 and 0.5, linearly, clipped to [0, 1]: the range of body
        tissue in CT, the only intensities the base has seen).
    ct_window : (low, high) HU

    Returns
    -------
    (I, J, K) float32 array
    """
    x = np.asarray(data, dtype=np.float32)
    if modality == "ct":
        return _ct_map(x, *_ct_bounds(ct_window))
    if modality in ("mr", "us"):
        lo, hi = (float(v) for v in np.percentile(x, PERCENTILES))
        scale = PERCENTILE_TOP / max(hi - lo, 1e-6)
        return np.clip((x - lo) * scale, 0, 1).astype(np.float32)
    raise ValueError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")


def _ct_bounds(ct_window) -> tuple[float, float]:
    lo, hi = float(ct_window[0]), float(ct_window[1])
    if not hi > lo:
        raise ValueError(f"CT window must have high > low, got {ct_window}")
    return lo, hi


def _ct_map(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The CT rule on float32 values: each voxel on its own."""
    return ((np.clip(x, lo, hi) - lo) / (hi - lo)).astype(np.float32)


class WindowedCT:
    """``normalize_intensity(data, "ct", ct_window=...)``, computed only where it is read.

    The CT rule maps every voxel on its own, so a block of the normalised volume is the rule
    applied to that block of ``data``, value for value. The engine reads the cube's block and
    one slice of a volume; normalising all of a 512 x 512 x 300 / 600 CT cost the first click
    1.2-1.5 / 1.3-1.9 s and a 300 / 600 MB float32 copy (BENCHMARKS.md, "Clinical-size CT").

    It offers what :func:`core.samples.build_inputs` reads: ``shape``, ``ndim``, ``dtype``,
    basic indexing, ``take`` (so ``np.take``), ``min()``; ``np.asarray`` gives the whole
    normalised volume for any other reader.

    Parameters
    ----------
    data : (I, J, K) raw values (HU), any real dtype; not copied, so not to be changed in
        place while this is in use
    ct_window : (low, high) HU
    minimum : ``data.min()`` when the caller has it (saves a pass over the volume)
    """

    def __init__(self, data: np.ndarray, ct_window=DEFAULT_CT_WINDOW, *, minimum=None):
        self.data = data
        self.lo, self.hi = _ct_bounds(ct_window)
        self.shape = tuple(data.shape)
        self.ndim = data.ndim
        self.dtype = np.dtype(np.float32)
        self._minimum = minimum

    def _map(self, raw) -> np.ndarray:
        return _ct_map(np.asarray(raw, dtype=np.float32), self.lo, self.hi)

    def __getitem__(self, key) -> np.ndarray:
        return self._map(self.data[key])

    def take(self, indices, axis=None, out=None, mode="raise") -> np.ndarray:
        if out is not None:
            raise TypeError("WindowedCT.take does not fill an out array")
        return self._map(np.take(self.data, indices, axis=axis, mode=mode))

    def min(self) -> np.float32:
        """The normalised minimum: the rule of the raw minimum, as the rule never lowers a
        larger value below a smaller one (clipping, then a subtraction and a division by a
        positive number, each correctly rounded, keep the order)."""
        if self._minimum is None:
            self._minimum = self.data.min()
        return self._map(np.reshape(self._minimum, (1,)))[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        full = self._map(self.data)
        return full if dtype is None else full.astype(dtype, copy=False)


def intensity_warning(
    data: np.ndarray,
    modality: str,
    *,
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
    value_range: tuple[float, float] | None = None,
) -> str | None:
    """A one-line warning when the values do not look like ``modality`` (None when they do).

    Only CT has units to check: a CT in Hounsfield units holds air or fat (below -100 HU)
    somewhere, or is a crop inside the body (soft tissue and noise: from -20 HU or below up
    to 30..400 HU), and most of it lies inside the window. An 8-bit export (0..255) or raw scanner
    values opened as CT squeeze into a sliver of the window (an 8-bit heart: Dice 0.51-0.79
    where its HU gave 0.86-0.94) or saturate it. Choosing MR or US, which scale by
    percentiles, fixes both in every front end; from Python a ``ct_window`` that fits the
    values does too.

    ``value_range``: ``(data.min(), data.max())`` when the caller has them (each is a pass
    over the whole volume).
    """
    if modality != "ct":
        return None
    x = np.asarray(data)
    lo, hi = (float(v) for v in (value_range or (x.min(), x.max())))
    bottom, top = (float(v) for v in ct_window)
    # a window that starts at or above the lowest value was fitted to values without air
    # (e.g. (0, 255) for an 8-bit export): nothing to warn of
    below, tissue, bone = _SOFT_TISSUE_HU
    soft_tissue = lo <= below and tissue <= hi <= bone
    if lo >= _CT_LOWEST_HU and lo > bottom and not soft_tissue:
        return (
            f"values {lo:g}..{hi:g} do not look like CT in Hounsfield units (no air or fat "
            f"below {_CT_LOWEST_HU:g}): choose the MR or US modality, which scale by "
            "percentiles"
        )
    # nothing above the top: no pass over the volume to count it
    above = float(np.count_nonzero(x > top)) / x.size if not hi <= top else 0.0
    if above > 0.25:
        return (
            f"{above:.0%} of the values lie above the CT window's top ({top:g} HU): choose the "
            "MR or US modality, which scale by percentiles"
        )
    return None


def display_window(data: np.ndarray) -> tuple[float, float]:
    """The grey-level window ``(low, high)`` to draw a volume with (napari, the web demo and
    the pictures of ``core.viz``): its 1st percentile, and the 99th of the voxels above its
    minimum.

    The minimum is left out of the high end because it is often padding that fills most of
    the field: the air around a head CT is 90-98 % of the OpenKBP volumes at -1024 HU, and
    counted in, the 99th percentile fell into soft tissue (``pt_203``: -1024..33), drawing the
    whole head white. The same holds for MR's zero background. Volumes over 2 M voxels are
    sampled (a strided 1 M).
    """
    d = np.asarray(data)
    if d.size > 2_000_000:  # a strided sample is plenty for percentiles of a large volume
        d = d.ravel()[:: d.size // 1_000_000]
    lo = float(np.percentile(d, 1))
    above = d[d > d.min()]
    hi = float(np.percentile(above, 99)) if above.size else lo
    return lo, max(hi, lo + 1e-6)
