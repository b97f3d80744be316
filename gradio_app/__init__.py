"""sam3d's Gradio web demo: a thin page over the ``core`` engine (no model code here).

Launch it with ``sam3d app [--host H --port P --share]`` or ``python -m gradio_app``; build it
in Python with ``gradio_app.app.build_app(reconstructor)``. Importing this package loads
neither gradio nor the model.
"""
