"""The plugin's dock widgets (each a magicgui Container built with the viewer), as named in
``napari.yaml``."""

from sam3d_napari._compare_widget import CompareWidget
from sam3d_napari._finetune_widget import FinetuneWidget
from sam3d_napari._reconstruct_widget import ReconstructWidget

__all__ = ["ReconstructWidget", "FinetuneWidget", "CompareWidget"]
