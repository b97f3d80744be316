"""Shared fixtures: tiny synthetic NIfTI datasets in the three layouts.

Volumes are built here (two ellipsoids on a noisy background) rather than with
``core.synthetic`` so that I/O and preprocessing tests do not depend on the phantom generator.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# core.precision keeps its measured CPU answer in a cache folder: the tests' own, never the
# user's (subprocesses inherit it), removed when the session ends.
os.environ["SAM3D_CACHE_DIR"] = tempfile.mkdtemp(prefix="sam3d-test-cache-")
atexit.register(shutil.rmtree, os.environ["SAM3D_CACHE_DIR"], ignore_errors=True)
# The CPU precision of "auto" (engine and training) is fp32 in tests on every machine, so the
# tests' numbers do not depend on the CPU; the tests of core.precision's rule and of CPU bf16
# training set or clear SAM3D_CPU_BF16 themselves.
os.environ["SAM3D_CPU_BF16"] = "0"
# The web demo's tests share fixtures through this module (their pytest_plugins) and import its
# helpers too: registered here, before that import, so that its asserts are rewritten.
pytest.register_assert_rewrite("gradio_common")


def oblique_affine(spacing=(1.5, 2.0, 3.0), angles=(0.3, -0.2, 0.25), origin=(-40.0, 25.0, 10.0)):
    """A rotated, anisotropic, translated voxel -> world affine."""
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def two_organs(shape=(24, 28, 20), seed=0):
    """An image in HU and a label map with classes 1 and 2 (ellipsoids)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    c = np.array(shape) / 2
    lab = np.zeros(shape, np.uint8)
    e1 = (((grid - (c + [-3, -2, 0])) / [5, 6, 4]) ** 2).sum(-1) <= 1
    e2 = (((grid - (c + [5, 4, 1])) / [3, 4, 3]) ** 2).sum(-1) <= 1
    lab[e1] = 1
    lab[e2 & ~e1] = 2
    img = -100 + 300.0 * (lab == 1) + 150.0 * (lab == 2) + rng.normal(0, 10, shape)
    return img.astype(np.float32), lab


def save_nifti(data, affine, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def write_case(image_path, label_path, *, seed=0, affine=None, shape=(24, 28, 20)):
    img, lab = two_organs(shape, seed)
    affine = np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine
    save_nifti(img, affine, image_path)
    save_nifti(lab, affine, label_path)
    return img, lab, affine


@pytest.fixture
def totalseg_dir(tmp_path):
    root = tmp_path / "totalseg"
    for i in range(3):
        cid = f"case{i}"
        write_case(root / cid / f"{cid}-image.nii.gz", root / cid / f"{cid}-label.nii.gz", seed=i)
    return root


@pytest.fixture
def nnunet_dir(tmp_path):
    root = tmp_path / "nnunet"
    for i in range(3):
        suffix = ".nii" if i == 1 else ".nii.gz"  # both suffixes must work
        write_case(
            root / "imagesTr" / f"pt_{i}_0000{suffix}",
            root / "labelsTr" / f"pt_{i}{suffix}",
            seed=i,
        )
    (root / "dataset.json").write_text(
        '{"channel_names": {"0": "CT"}, "labels": {"background": 0, "Liver": 1, "Spleen": 2}}'
    )
    return root


@pytest.fixture
def flat_dir(tmp_path):
    root = tmp_path / "flat"
    for i in range(2):
        write_case(root / "volumes" / f"vol{i}.nii.gz", root / "labels" / f"vol{i}.nii.gz", seed=i)
    return root


def tiny_model_config(size: int = 16):
    """A model small enough for tests on 2 CPU cores (cube and views ``size`` voxels wide)."""
    from core.model import ModelConfig

    return ModelConfig(
        cube_size=size,
        view_size=size,
        patch=8,
        dim=32,
        depth=1,
        heads=2,
        enc_channels=(24, 24, 32),
        dec_channels=(24, 24, 0),
    )


def shared_dataset(name: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} is absent")
    return path


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA is available; everything else always runs."""
    gpu_items = [it for it in items if it.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (none available)")
        for it in gpu_items:
            it.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A GUI test's worker threads (a reconstruction, the model's preload) end with the test,
    before its viewer closes, and their signals are delivered to it: none runs on into the
    next test. A test that failed is not waited for (its viewer's closing stops its work)."""
    result = yield  # a failed test raises here: not waited for
    if item.get_closest_marker("gui") is None:
        return result
    import time

    from qtpy.QtCore import QThreadPool
    from qtpy.QtWidgets import QApplication

    if QApplication.instance() is None:
        return result
    pool, deadline = QThreadPool.globalInstance(), time.monotonic() + 120
    while not pool.waitForDone(20):
        QApplication.processEvents()
        if time.monotonic() > deadline:
            pytest.fail("a worker thread outlived its test by 120 s")
    QApplication.processEvents()  # their last signals (finished, returned)
    return result


# training tests (test_train*.py)


@pytest.fixture(scope="module")
def shipped_model():
    """The shipped base, loaded once per test module, on one torch thread."""
    import torch

    from core.engine import Reconstructor

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads spin against each other on a busy 2-core box
    yield Reconstructor.from_pretrained()
    torch.set_num_threads(n)


@pytest.fixture
def fast_model(monkeypatch, shipped_model):
    """Every napari viewer's session uses the one already loaded model (loading takes
    seconds)."""
    from sam3d_napari._session import Session

    monkeypatch.setattr(Session, "_reconstructor", lambda self: shipped_model)
    return shipped_model


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures(...)``)."""
    import torch

    # Two OpenMP threads on a busy two-core machine spin against each other (10x slower).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def hearts_raw(tmp_path_factory):
    """4 synthetic hearts, 32^3 at 6 mm (the training tests' data)."""
    from core.synthetic import write_heart_dataset

    root = tmp_path_factory.mktemp("hearts") / "raw"
    write_heart_dataset(root, 4, shape=(32, 32, 32), spacing=6.0)
    return root


@pytest.fixture(scope="module")
def hearts_cache(hearts_raw):
    """``hearts_raw`` preprocessed (5 classes, 2 slices per axis)."""
    from core.preprocess import PreprocessConfig, preprocess_dataset

    out = hearts_raw.parent / "cache"
    cfg = PreprocessConfig(
        input_dir=str(hearts_raw), out_dir=str(out), classes=5, spacing=6.0, slices_per_axis=2
    )
    assert preprocess_dataset(cfg).n_done == 4
    return out


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """An untrained tiny base (32^3 cube) saved as weights: the CLI tests' plumbing model."""
    import torch

    from core.model import Sam3DMed
    from core.weights import save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    model = Sam3DMed(tiny_model_config(32))
    save_weights(model, path, metadata={"trained_on": "nothing (test)", "recipe": "test"})
    return path
