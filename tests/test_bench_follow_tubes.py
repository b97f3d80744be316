"""bench/follow_tubes.py (tried, not kept): its elongation test and its following rule."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ft():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(
        "follow_tubes", REPO / "bench" / "follow_tubes.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tube(shape, z0, z1, r=3):
    """A straight tube along axis 2 from slice z0 to z1 (inclusive), radius r voxels."""
    i, j = np.indices(shape[:2])
    disc = (i - shape[0] // 2) ** 2 + (j - shape[1] // 2) ** 2 <= r * r
    m = np.zeros(shape, bool)
    m[:, :, z0 : z1 + 1] = disc[:, :, None]
    return m


def test_elongation(ft):
    tube = _tube((32, 32, 60), 20, 40)
    assert ft.elongated(tube, 2, (1.0, 1.0, 1.0), 1.5)
    assert not ft.elongated(tube, 0, (1.0, 1.0, 1.0), 1.5)  # across it: wide, not long
    assert not ft.elongated(tube, 2, (1.0, 1.0, 0.2), 1.5)  # thin slices: 4.2 mm long
    assert not ft.elongated(np.zeros_like(tube), 2, (1.0, 1.0, 1.0), 1.5)


def test_following_reaches_both_ends_and_stops_there(ft):
    shape = (32, 32, 80)
    truth = _tube(shape, 5, 70)
    calls = []

    def predict(click):  # a model that sees 10 slices either side of its click
        calls.append(click)
        z = click.slice_idx
        return truth & _tube(shape, max(z - 10, 0), min(z + 10, shape[2] - 1), r=20)

    start = truth & _tube(shape, 30, 45, r=20)
    out, used = ft.follow(predict, start, 2, back=2, steps=8, min_gain=3)
    # up to the last step that added at least min_gain slices: the tube's last slice at
    # either end (a gain of 1) is left
    assert np.array_equal(out, truth & _tube(shape, 6, 69, r=20)) and used == len(calls)
    assert all(c.positive and c.axis == 2 for c in calls)
    # stopped by min_gain at both ends, not by the step limit
    few, _ = ft.follow(predict, start, 2, back=2, steps=1, min_gain=3)
    assert 0 < (truth & ~few).sum() < (truth & ~start).sum()


def test_following_stops_where_the_new_mask_disagrees(ft):
    shape = (32, 32, 80)
    start = _tube(shape, 30, 45)

    def elsewhere(click):  # jumps to another structure
        m = np.zeros(shape, bool)
        m[0:4, 0:4, 10:70] = True
        return m

    out, used = ft.follow(elsewhere, start, 2)
    assert np.array_equal(out, start) and used == 2
