"""Packaging: the console script, the napari manifest entry point, the README/CI contract."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def test_console_script_runs():
    exe = Path(sys.executable).parent / "sam3d"
    if not exe.exists():
        pytest.skip("sam3d console script not installed in this environment")
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for cmd in ("demo", "synth", "preprocess"):
        assert cmd in res.stdout


def test_napari_manifest_is_registered_and_valid():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution("sam3d-napari")
    assert manifest.name == "sam3d-napari"
    top = npe2.PluginManifest.from_file(REPO / "napari.yaml")
    assert top.name == manifest.name


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    test_cmd = "bash scripts/setup.sh --dev && .venv/bin/python -m pytest"
    assert test_cmd in readme
    assert any(line.strip() == test_cmd for line in ci.splitlines())
