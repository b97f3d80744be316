"""The engine's modes and which cube options apply in each, without importing torch.

Front ends (the napari widget, the web demo) read these to build their controls and to know
whether a setting changes a result, before any model is loaded.
"""

from __future__ import annotations

__all__ = ["INDEX_ORDERS", "MODES", "ZOOM_IN_MODES", "check_index_order", "zoom_in_applies"]

MODES = ("volume", "slice")  # "volume": the model sees the 3D volume; "slice": only the slice

# What a file's slice and (row, col) indices refer to in `sam3d predict` and the web API: the
# volume turned to RAS+ (the engine's grid; for a RAS file its own order), or the file's own
# array order (the voxel indices 3D Slicer, ITK-SNAP and nibabel show).
INDEX_ORDERS = ("ras", "file")


def check_index_order(indices: str) -> str:
    """``indices`` if it is one of :data:`INDEX_ORDERS`, else a one-line ``ValueError``."""
    if indices not in INDEX_ORDERS:
        raise ValueError(f"indices must be one of {', '.join(INDEX_ORDERS)}, got {indices!r}")
    return indices


# The engine's optional zoom-in (core.engine.CubePolicy) runs in volume mode only: it hurt
# slice mode on both validation sets (see core.engine's module docstring).
ZOOM_IN_MODES = ("volume",)


def zoom_in_applies(mode: str) -> bool:
    """Whether the zoom-in option changes a result in ``mode``."""
    return mode in ZOOM_IN_MODES
