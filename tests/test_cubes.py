"""Training examples (core.cubes): simulated previous masks for refinement, and where the
training cube goes (it must not give the organ's size or centre away)."""

import numpy as np

from core.clicks import Click, PromptSet
from core.cubes import CubeSampling, _perturb, organ_extent_mm, training_cube
from core.metrics import dice


def _ball(n=48, r=12):
    g = np.indices((n, n, n)) - n // 2
    return (g**2).sum(0) <= r * r


def test_perturbed_previous_is_binary_imperfect_and_still_about_the_organ():
    occ = _ball()
    scores = []
    for seed in range(40):
        pred = _perturb(occ, np.random.default_rng(seed))
        assert pred.dtype == bool and pred.shape == occ.shape
        scores.append(dice(pred, occ))
    scores = np.array(scores)
    # Never a copy of the truth (else refinement learns to copy), never unrelated to it.
    assert (scores < 0.999).mean() > 0.9
    assert np.median(scores) > 0.5 and scores.min() >= 0.0
    # Varied: some mild, some severe errors.
    assert scores.max() - scores.min() > 0.2


def test_perturbation_is_deterministic_for_a_seed():
    occ = _ball()
    a = _perturb(occ, np.random.default_rng(7))
    b = _perturb(occ, np.random.default_rng(7))
    assert np.array_equal(a, b)


def _organ(r, n=64, sp=3.0):
    """A ball of radius r voxels off the volume's centre, its affine, and a click inside it."""
    g = np.indices((n, n, n)) - np.array([30, 34, 32])[:, None, None, None]
    aff = np.diag([sp, sp, sp, 1.0])
    return (g**2).sum(0) <= r * r, aff, PromptSet((Click(2, 32, 30 + r // 2, 34),))


def test_first_pass_cube_is_the_engines_and_knows_nothing_of_the_organ():
    s = CubeSampling(p_default_spacing=1.0)
    cubes = []
    for r in (4, 12):
        gt, aff, prompts = _organ(r)
        # the click differs by organ; put it at one place to compare the cubes
        prompts = PromptSet((Click(2, 32, 31, 34),))
        cube = training_cube(gt, aff, prompts, s, 64, np.random.default_rng(0))
        assert cube.spacing == 3.0  # the engine's default (CubePolicy.default_spacing_mm)
        np.testing.assert_allclose(cube.center, [31 * 3.0, 34 * 3.0, 32 * 3.0])
        cubes.append(cube)
    # a small and a large organ under the same click get the same cube
    np.testing.assert_allclose(cubes[0].affine, cubes[1].affine)


def _fills(scale_noise, r=20, n_draws=300):
    gt, aff, prompts = _organ(r)
    s = CubeSampling(p_default_spacing=0.0, scale_noise=scale_noise, fill_range=(0.4, 0.7))
    rng = np.random.default_rng(1)
    ext = organ_extent_mm(gt, aff)
    return np.array(
        [ext / (64 * training_cube(gt, aff, prompts, s, 64, rng).spacing) for _ in range(n_draws)]
    )


def test_zoomed_cube_scale_is_only_a_noisy_hint_of_the_organ_size():
    exact = _fills(0.0)
    assert exact.min() >= 0.4 - 1e-9 and exact.max() <= 0.7 + 1e-9
    noisy = _fills(0.3)
    # the organ's fill of the cube strays well outside the nominal range
    outside = (noisy < 0.4) | (noisy > 0.7)
    assert outside.mean() > 0.25
    assert noisy.min() < 0.3 and noisy.max() > 0.85


def test_bounding_box_and_the_cube_from_it():
    from core.geometry import mask_bbox, mask_block

    gt, aff, prompts = _organ(9)
    idx = np.argwhere(gt)
    lo, hi = mask_bbox(gt)
    np.testing.assert_array_equal(lo, idx.min(0))
    np.testing.assert_array_equal(hi, idx.max(0))
    assert mask_bbox(np.zeros((4, 5, 6), bool)) is None
    assert mask_block(gt) == tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
    assert mask_block(np.zeros((4, 5, 6), bool)) is None
    assert organ_extent_mm(np.zeros((4, 5, 6), bool), aff) == 0.0
    # a known box gives the cube the mask gives (the training items pass the cached box)
    s = CubeSampling(p_default_spacing=0.0)
    a = training_cube(gt, aff, prompts, s, 64, np.random.default_rng(4))
    b = training_cube(None, aff, prompts, s, 64, np.random.default_rng(4), bbox=(lo, hi))
    np.testing.assert_array_equal(a.affine, b.affine)
