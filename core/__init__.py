"""sam3d-napari's UI-free engine.

Importing ``core`` is cheap: no model, no torch, no UI toolkit is loaded until a function that
needs it runs. ``core`` never imports napari, Qt, magicgui or gradio.
"""

__version__ = "0.1.0"
