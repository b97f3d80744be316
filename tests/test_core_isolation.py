"""`core` is the UI-free engine: it must import and work with every UI package blocked."""

import subprocess
import sys
import textwrap

from conftest import REPO

BLOCKED = (
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "magicgui",
    "gradio",
    "superqt",
    "vispy",
)


def test_core_imports_with_ui_packages_blocked():
    code = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        BLOCKED = {BLOCKED!r}

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked UI package: " + name)

        sys.meta_path.insert(0, Blocker())
        import core
        names = sorted(m.name for m in pkgutil.walk_packages(core.__path__, "core."))
        for name in names:
            if name != "core.__main__":
                importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        print(len(names), "modules")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.split()[0]) >= 8


def test_importing_core_is_cheap():
    """No torch, no model, no heavy library at `import core` time."""
    code = "import sys, core, core.cli; print(sorted({m.split('.')[0] for m in sys.modules}))"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    loaded = res.stdout
    for heavy in ("torch", "monai", "peft", "trimesh", "skimage"):
        assert f"'{heavy}'" not in loaded, f"{heavy} imported by `import core`"


def test_reading_training_results_does_not_import_torch():
    # The napari plugin reads TrainResult in its GUI process while a child process trains;
    # importing torch there (about 0.4 s holding the GIL) froze the viewer at Start.
    code = "import sys, core.train_outputs; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
