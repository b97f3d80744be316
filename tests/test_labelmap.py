"""core.labelmap: objects into one label map without silent overwriting (napari's Commit,
the web demo's download)."""

import numpy as np

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
