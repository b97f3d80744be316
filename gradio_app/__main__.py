"""``python -m gradio_app [--host H --port P --share ...]``: the same as ``sam3d app``."""

import sys

from core.cli import main

sys.exit(main(["app", *sys.argv[1:]]))
