"""The engine normalises a CT only where the model reads it (``core.intensity.WindowedCT``) and
reads masks as uint8 without copying them: the same results as normalising the whole volume
first, which a clinical-size CT (512 x 512 x 600) paid 1-2 s for on every first click.

Each test compares against the old path, value for value: masks, slice masks, probabilities
and meshes must be identical, not close.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import oblique_affine

import core.engine
from core.clicks import Box, Click, PromptSet, first_click, next_click
from core.cube import Cube, axis_directions, sample_into_cube
from core.cube_policy import inside_cube
from core.engine import Reconstructor
from core.intensity import DEFAULT_CT_WINDOW, WindowedCT, normalize_intensity
from core.io import Volume, voxel_to_world
from core.model import ModelConfig
from core.samples import build_inputs
from core.synthetic import make_heart_phantom


@pytest.fixture(scope="module")
def base():
    return Reconstructor.from_pretrained()


@pytest.fixture(scope="module")
def heart():
    """A heart in a field of view wider than the 192 mm cube, so the cube reads a block."""
    image, label = make_heart_phantom(11, shape=(144, 144, 56), spacing=(1.7, 1.7, 4.0))
    return image, label.data


def _values(rng, shape=(30, 26, 22)):
    """HU with values on, just inside and beyond both window edges."""
    x = rng.uniform(-1500, 2500, shape).astype(np.float32)
    x.flat[:6] = [-1000, 2000, np.nextafter(-1000, 0), np.nextafter(2000, 0), -3000, 5000]
    return x


@pytest.mark.parametrize("window", [DEFAULT_CT_WINDOW, (-160.0, 240.0), (0.0, 255.0)])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.float64])
def test_every_read_equals_the_whole_normalised_volume(window, dtype):
    raw = _values(np.random.default_rng(0)).astype(dtype)
    full = normalize_intensity(raw, "ct", ct_window=window)
    lazy = WindowedCT(raw, window)
    assert lazy.shape == full.shape and lazy.ndim == 3 and lazy.dtype == full.dtype
    for key in [np.s_[3:17, 0:26, 5:9], np.s_[:, 4, :], np.s_[29], np.s_[::2, 1:, -3:]]:
        got = lazy[key]
        assert got.dtype == np.float32 and np.array_equal(got, full[key])
    for axis in range(3):
        assert np.array_equal(np.take(lazy, 7, axis=axis), np.take(full, 7, axis=axis))
    assert lazy.min() == full.min() and type(lazy.min()) is type(full.min())
    assert np.array_equal(np.asarray(lazy), full)


def test_a_bad_window_is_refused_as_before():
    with pytest.raises(ValueError, match="high > low"):
        WindowedCT(np.zeros((4, 4, 4), np.float32), (10.0, 10.0))


def test_model_inputs_are_identical(heart):
    image, label = heart
    full = normalize_intensity(image.data, "ct")
    lazy = WindowedCT(image.data)
    cfg = ModelConfig()
    dirs = axis_directions(image.affine)
    for k, spacing in ((2, 3.0), (5, 4.8), (1, 1.4)):
        prompts = PromptSet((first_click(label == k),))
        for centre in (prompts.clicks[0].voxel(), (3.0, 140.0, 50.0)):  # inside; at a corner
            cube = Cube(voxel_to_world(image.affine, centre), spacing, dirs)
            for mode in ("volume", "slice"):
                a = build_inputs(full, image.affine, prompts, cube, cfg, mode=mode)
                b = build_inputs(lazy, image.affine, prompts, cube, cfg, mode=mode)
                assert a.keys() == b.keys()
                for key in a:
                    assert np.array_equal(a[key], b[key], equal_nan=True), (k, centre, key)
            cube_a = sample_into_cube(full, image.affine, cube)
            assert np.array_equal(cube_a, sample_into_cube(lazy, image.affine, cube))


def _old_paths(monkeypatch):
    """The engine as it was: the whole volume normalised up front, masks copied as uint8."""
    monkeypatch.setattr(
        core.engine,
        "WindowedCT",
        lambda data, window, minimum=None: normalize_intensity(data, "ct", ct_window=window),
    )
    monkeypatch.setattr(core.engine, "_as_uint8", lambda m: m.astype(np.uint8))


def _session(rec, volume, label, ks, mode):
    """First click and one corrective click on each structure of ``ks``; a corrective click
    outside the first cube (a new cube around the previous mask, resampled from it); a box."""
    out = []
    for k in ks:
        gt = label == k
        prompts = PromptSet((first_click(gt),))
        res = rec.predict(volume, prompts, mode=mode)
        out.append(res)
        fix = next_click(res.mask, gt, spacing=volume.spacing)
        if fix is not None:
            out.append(rec.predict(volume, prompts.add(fix), mode=mode, previous=res))
    first = out[0]
    far = first.prompts.add(Click(2, FAR[2], FAR[0], FAR[1], positive=False))
    assert not inside_cube(first.cube, volume.affine, np.array(FAR, float))
    out.append(rec.predict(volume, far, mode=mode, previous=first))
    out.append(rec.predict(volume, PromptSet(box=Box(2, 28, 50, 50, 90, 90)), mode=mode))
    return out


FAR = (2, 2, 28)  # a voxel near a corner of the 144 x 144 x 56 heart volume


def _same(a, b):
    assert np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.slice_mask, b.slice_mask)
    assert np.array_equal(a.cube_probability, b.cube_probability)
    assert a.passes == b.passes and a.warnings == b.warnings
    assert (a.mesh is None) == (b.mesh is None)
    if a.mesh is not None:
        assert np.array_equal(a.mesh.vertices, b.mesh.vertices)
        assert np.array_equal(a.mesh.faces, b.mesh.faces)


@pytest.mark.parametrize("mode", ["volume", "slice"])
@pytest.mark.parametrize("layout", ["ras", "flipped", "oblique"])
def test_the_engine_gives_the_results_of_the_whole_volume_path(
    base, heart, monkeypatch, mode, layout
):
    image, label = heart
    affine = image.affine
    data = image.data
    if layout == "flipped":  # stored LPS-like: the engine's canonical frame
        data, label = data[::-1, ::-1].copy(), label[::-1, ::-1].copy()
        affine = affine @ np.diag([-1.0, -1.0, 1.0, 1.0])
        affine[:2, 3] = -affine[:2, 3]
    elif layout == "oblique":
        affine = oblique_affine(spacing=(1.7, 1.7, 4.0))
    ks = (1, 2, 5) if layout == "ras" else (4,)
    new = _session(base, Volume(data.copy(), affine), label, ks, mode)
    with monkeypatch.context() as m:
        _old_paths(m)
        old = _session(base, Volume(data.copy(), affine), label, ks, mode)
    assert len(new) == len(old) >= 2 * len(ks)
    assert any(r.mesh is not None for r in new)
    for a, b in zip(new, old, strict=True):
        _same(a, b)


def test_values_out_of_the_ct_range_warn_as_before(base, heart):
    image, label = heart
    prompts = PromptSet((first_click(label == 2),))
    for data in (image.data + 1200.0, (image.data - image.data.min()) * 3.0):
        res = base.predict(Volume(data.astype(np.float32), image.affine), prompts, mesh=False)
        assert res.warnings and "CT" in res.warnings[0]
    assert not base.predict(image, prompts, mesh=False).warnings
