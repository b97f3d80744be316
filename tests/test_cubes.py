"""Simulated previous masks for refinement training (core.cubes._perturb)."""

import numpy as np

from core.cubes import _perturb
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
