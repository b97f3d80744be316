"""core.labelmap: objects into one label map without silent overwriting (napari's Commit,
the web demo's download)."""

import numpy as np
import pytest

from core.labelmap import commit_mask, next_free_class


def test_commit_rule_into_a_bool_map_keeps_the_class_id():
    labels = np.zeros((3, 3, 3), bool)
    labels[0] = True
    mask = np.zeros((3, 3, 3), bool)
    mask[2] = True
    data, report = commit_mask(labels, mask, 3, overwrite=False)
    assert data.dtype == np.uint8 and set(np.unique(data)) == {0, 1, 3}  # 3 was True
    assert report.voxels == 9 and not report.clashes
    assert commit_mask(labels, mask, 300, overwrite=False)[0].max() == 300


def test_commit_rule_reports_clashes_and_widens_for_large_class_ids():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0] = 3
    mask = np.zeros_like(labels, bool)
    mask[:2] = True
    kept, report = commit_mask(labels, mask, 300, overwrite=False)
    assert kept.dtype == np.uint16 and labels.max() == 3  # the input is never modified
    assert (kept[0] == 3).all() and (kept[1] == 300).all()
    assert (report.clashes, report.clash_classes) == (16, (3,))
    assert "kept 16 voxels already labelled [3]" in report.message("map")
    over, report = commit_mask(labels, mask, 4, overwrite=True)
    assert (over[:2] == 4).all() and "overwrote 16" in report.message("map", "LV")
    assert next_free_class(kept, 2) == 4  # 3 is taken


def _whole_map_commit(labels, mask, class_id, overwrite):
    """The rule as it was first written: every step over the whole map (the reference)."""
    data = labels.copy()
    under = data[mask]
    clash = (under != 0) & (under != class_id)
    report = (
        int(mask.sum()),
        int(np.count_nonzero(clash)),
        tuple(sorted({int(v) for v in np.unique(under[clash])})),
        int(np.count_nonzero(labels == class_id)),
    )
    if overwrite:
        data[mask] = class_id
    else:
        data[mask & (data == 0)] = class_id
    return data, report


def _blob(rng, shape):
    """A random box-shaped object with holes, somewhere in the map (or nothing)."""
    mask = np.zeros(shape, bool)
    if rng.random() < 0.1:
        return mask
    lo = [int(rng.integers(0, n)) for n in shape]
    hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, shape, strict=True)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    mask[box] = rng.random(mask[box].shape) < 0.7
    return mask


def test_commit_block_is_the_whole_map_rule_written_in_the_objects_box():
    """commit_block reads and writes only the object's bounding box: written back there it
    gives the map and the report of the rule applied to the whole map, for keep and
    overwrite, several dtypes and maps already holding the class; nothing outside the box is
    part of what it returns, and the input is not modified."""
    from core.geometry import mask_block
    from core.labelmap import commit_block

    rng = np.random.default_rng(0)
    for trial in range(60):
        dtype = (np.uint8, np.uint16, np.int32, np.float32)[trial % 4]
        shape = tuple(int(n) for n in rng.integers(3, 14, 3))
        labels = rng.choice([0, 0, 0, 1, 2, 5], size=shape).astype(dtype)
        before = labels.copy()
        mask = _blob(rng, shape)
        cid, overwrite = int(rng.choice([1, 2, 3])), bool(trial % 2)
        box, values, report = commit_block(labels, mask, cid, overwrite=overwrite)
        assert np.array_equal(labels, before)  # not modified
        want, (voxels, clashes, classes, had) = _whole_map_commit(labels, mask, cid, overwrite)
        assert box == mask_block(mask)
        out = labels.copy()
        if box is not None:
            assert values.dtype == labels.dtype and values.shape == out[box].shape
            out[box] = values
        assert np.array_equal(out, want)
        got = (report.voxels, report.clashes, report.clash_classes, report.already_had)
        assert got == (voxels, clashes, classes, had)
        data, full = commit_mask(labels, mask, cid, overwrite=overwrite)
        assert np.array_equal(data, want) and full == report


def test_commit_block_needs_a_map_that_holds_the_class():
    from core.labelmap import commit_block

    mask = np.ones((2, 2, 2), bool)
    for labels, cid in ((np.zeros((2, 2, 2), bool), 1), (np.zeros((2, 2, 2), np.uint8), 300)):
        with pytest.raises(ValueError, match="widen"):
            commit_block(labels, mask, cid, overwrite=False)


def test_next_free_class_lists_the_values_only_when_the_next_id_is_taken(monkeypatch):
    """The usual case (the next id is free) is one comparison over the map, no np.unique (a
    sort of a whole CT-sized map, a quarter of a second); every answer is the first unused id
    above ``after``, as listing the values gives."""

    def reference(labels, after, maximum):
        used = {int(v) for v in np.unique(labels)}
        nxt = after + 1
        while nxt in used and nxt < maximum:
            nxt += 1
        return nxt

    rng = np.random.default_rng(1)
    cases = []
    for _ in range(200):
        dtype = (np.uint8, np.uint16, np.int32)[int(rng.integers(0, 3))]
        labels = rng.choice([0, 1, 2, 3, 5, 255], size=(4, 5, 6)).astype(dtype)
        after, maximum = int(rng.integers(0, 7)), int(rng.choice([4, 6, 255, 256, 65535]))
        cases.append((labels, after, maximum, reference(labels, after, maximum)))
    for labels, after, maximum, want in cases:
        assert next_free_class(labels, after, maximum=maximum) == want
    assert next_free_class(np.full((2, 2, 2), 255, np.uint8), 254) == 256

    def no_unique(*a, **k):
        raise AssertionError("np.unique over the map")

    monkeypatch.setattr(np, "unique", no_unique)
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[:2], labels[3] = 1, 2
    assert next_free_class(labels, 2) == 3
    assert next_free_class(labels, 0, maximum=1) == 1
