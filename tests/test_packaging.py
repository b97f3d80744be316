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


@pytest.mark.slow
def test_the_wheel_ships_the_weights_the_adapters_and_the_configs(tmp_path):
    """A non-editable install works outside the repository: the wheel holds everything the
    CLI and the plugin read at run time (built from a copy of the tracked files)."""
    import shutil
    import zipfile

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to list the tracked files")
    src = tmp_path / "src"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for rel in filter(None, (t.decode() for t in tracked)):
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / rel).is_symlink():
            target.symlink_to((REPO / rel).readlink())  # relative to its own folder
        elif (REPO / rel).is_file():
            shutil.copy2(REPO / rel, target)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*cmd, "-w", str(tmp_path / "wheel"), str(src)], check=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [
        "core/assets/base.safetensors",
        "core/assets/base.json",
        "core/assets/adapters/headneck-ct/adapter_model.safetensors",
        "core/assets/adapters/headneck-ct/adapter_config.json",
        "sam3d_napari/napari.yaml",
        *(f"core/configs/{p.name}" for p in (REPO / "core" / "configs").glob("*.yaml")),
    ]
    assert "core/configs/lora_headneck.yaml" in wanted
    assert not [w for w in wanted if w not in names]


def test_shipped_configs_resolve_by_name_from_any_folder(tmp_path, monkeypatch):
    from core.config import load_config, resolve_config, shipped_configs

    monkeypatch.chdir(tmp_path)
    assert "lora_headneck" in shipped_configs()
    for name in ("lora_headneck", "lora_headneck.yaml", "configs/lora_headneck.yaml"):
        assert resolve_config(name) == REPO / "core" / "configs" / "lora_headneck.yaml"
    assert load_config("lora_headneck").lora.enabled
    mine = tmp_path / "lora_headneck.yaml"  # a file of the user's own wins
    mine.write_text("lora:\n  rank: 2\n")
    assert resolve_config("lora_headneck.yaml").resolve() == mine
    with pytest.raises(ValueError, match=r"nope.yaml: config file not found \(shipped configs: "):
        resolve_config("nope.yaml")


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    test_cmd = "bash scripts/setup.sh --dev && .venv/bin/python -m pytest"
    assert test_cmd in readme
    assert any(line.strip() == test_cmd for line in ci.splitlines())
