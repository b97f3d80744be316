"""sam3d-napari's napari plugin: a thin shell over ``core``.

Contributions (``napari.yaml``): a NIfTI reader, Labels and Surface writers, the synthetic
cardiac CT sample, and three dock widgets: Reconstruct (click to 3D), Fine-tune (LoRA) and
Compare. Importing this package loads neither napari nor torch; the widgets do when docked.
"""

__all__ = ["__version__"]

try:
    from importlib.metadata import version as _version

    __version__ = _version("sam3d-napari")
except Exception:  # not installed (running from a source tree)
    __version__ = "0+unknown"
