"""Synthetic sample data: cardiac phantoms, their dataset writer, and organ-like samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from core.io import load_image, load_pair, voxel_to_world
from core.synthetic import (
    HEART_LABELS,
    make_heart_phantom,
    make_organ_sample,
    write_heart_dataset,
)

LA, LV, RA, RV, MYO = 1, 2, 3, 4, 5
ML_PER_VOXEL = 27 / 1000  # 3 mm voxels


@pytest.fixture(scope="module")
def hearts():
    return {s: make_heart_phantom(s) for s in (0, 1, 2, 3)}


@pytest.fixture(scope="module")
def organs():
    return {s: make_organ_sample(s) for s in range(12)}


def _touch(lab, a, b) -> int:
    """Number of voxels of label ``b`` face-adjacent to label ``a``."""
    return int((ndi.binary_dilation(lab == a) & (lab == b)).sum())


def _on_border(mask) -> bool:
    return any(mask.take(i, axis=a).any() for a in range(3) for i in (0, -1))


def _centroid_mm(label, mask):
    return voxel_to_world(label.affine, np.argwhere(mask).mean(axis=0))


# --------------------------------------------------------------------------------------------
# Heart phantom


def test_heart_is_deterministic_per_seed_and_differs_between_seeds(hearts):
    image, label = make_heart_phantom(0)
    np.testing.assert_array_equal(image.data, hearts[0][0].data)
    np.testing.assert_array_equal(label.data, hearts[0][1].data)
    assert not np.array_equal(hearts[1][1].data, hearts[0][1].data)
    assert not np.allclose(hearts[1][0].data, hearts[0][0].data)


def test_heart_grid_is_3mm_ras_centred_on_origin(hearts):
    image, label = hearts[0]
    assert image.shape == label.shape == (64, 64, 64)
    assert image.data.dtype == np.float32 and label.data.dtype == np.uint8
    np.testing.assert_allclose(image.affine, label.affine)
    np.testing.assert_allclose(np.diag(image.affine)[:3], 3.0)  # diagonal positive: RAS+
    np.testing.assert_allclose(image.affine[:3, :3], np.diag([3.0, 3.0, 3.0]))
    centre = voxel_to_world(image.affine, (np.array(image.shape) - 1) / 2)
    np.testing.assert_allclose(centre, 0.0, atol=1e-6)


def test_heart_has_all_five_labels_with_plausible_sizes(hearts):
    for _, label in hearts.values():
        assert set(np.unique(label.data)) == {0, *HEART_LABELS}  # hard labels, nothing else
        ml = {c: np.count_nonzero(label.data == c) * ML_PER_VOXEL for c in HEART_LABELS}
        for c in (LA, LV, RA, RV):
            assert 10 < ml[c] < 150, (HEART_LABELS[c], ml[c])
            assert ml[c] / ML_PER_VOXEL >= 300  # a few hundred voxels at 64^3
        assert 40 < ml[MYO] < 250
        nz = np.argwhere(label.data > 0)
        width = (nz.max(0) - nz.min(0) + 1).max() / 64
        assert 0.35 <= width <= 0.7  # the heart fills about half of the field of view


def test_myocardium_wraps_the_lv_with_an_even_wall(hearts):
    for _, label in hearts.values():
        lab = label.data
        lv = lab == LV
        rim = ndi.binary_dilation(lv) & ~lv
        # all around the LV is myocardium, except the valve opening into the LA
        assert np.mean(lab[rim] == MYO) > 0.8
        assert not np.any(lab[rim] == RV)  # the septum lies between LV and RV
        assert np.mean(lab[rim] == 0) < 0.05  # only the outflow tract opens to the outside
        wall = ndi.distance_transform_edt(~lv)[lab == MYO]
        assert 2.5 <= np.percentile(wall, 90) <= 5.0  # 8-15 mm at 3 mm voxels


def test_chambers_touch_as_in_anatomy(hearts):
    for _, label in hearts.values():
        lab = label.data
        for a, b in ((LA, LV), (RA, RV), (LA, RA), (RV, MYO), (LA, MYO)):
            assert _touch(lab, a, b) >= 5, (HEART_LABELS[a], HEART_LABELS[b])
        assert _touch(lab, LV, RV) == 0  # the septum (myocardium) separates the ventricles


def test_chambers_sit_where_anatomy_puts_them(hearts):
    for _, label in hearts.values():
        c = {v: _centroid_mm(label, label.data == v) for v in HEART_LABELS}
        assert c[RA][0] > c[LV][0] + 10  # RA on the patient's right (+x in RAS)
        assert c[RV][1] > c[LV][1]  # RV in front of the LV
        assert c[LA][1] < c[LV][1] - 5  # LA posterior
        atria = _centroid_mm(label, np.isin(label.data, (LA, RA)))
        ventricles = _centroid_mm(label, np.isin(label.data, (LV, RV, MYO)))
        base = atria - ventricles  # base direction: right, posterior, superior
        canonical = np.array([0.6, -0.55, 0.58])
        assert base @ canonical > 0.5 * np.linalg.norm(base) * np.linalg.norm(canonical)


def test_heart_stays_inside_the_volume_also_for_small_fields_of_view(hearts):
    for _, label in hearts.values():
        assert not _on_border(label.data > 0)
    _, small = make_heart_phantom(5, shape=(40, 40, 32), spacing=3.0)
    assert small.present_labels() == [1, 2, 3, 4, 5]
    assert not _on_border(small.data > 0)


def test_heart_intensities_are_ct_like(hearts):
    for image, label in hearts.values():
        img, lab = image.data, label.data
        heart = lab > 0
        blood = img[ndi.binary_erosion(lab == LV)].mean()
        myo = img[lab == MYO].mean()
        near = ndi.binary_dilation(heart)
        fat = img[ndi.binary_dilation(near) & ~near].mean()  # the layer around the heart
        lung_voxels = img[(img > -950) & (img < -700)]
        assert lung_voxels.size > 0.08 * img.size  # lungs on both sides
        lung = lung_voxels.mean()
        assert 300 < blood < 480 and 60 < myo < 180
        assert blood > myo + 150 > fat + 150 > lung + 600
        assert img[:4, :4, :].mean() < -900  # air outside the body in the corners
        noise = img[ndi.binary_erosion(lab == LV, iterations=2)].std()
        assert 8 < noise < 40  # scanner noise, not a flat fill
        assert img.min() >= -1024 and img.max() <= 3071


def test_heart_edges_have_partial_volume_like_real_ct(hearts):
    for image, label in hearts.values():
        lv = label.data == LV
        edge = lv & ~ndi.binary_erosion(lv)  # LV voxels touching the wall
        inner = image.data[ndi.binary_erosion(lv, iterations=2)].mean()
        # blurred edges: blood next to the myocardium reads lower than the cavity centre
        assert 30 < inner - image.data[edge].mean() < 200


def test_heart_cases_vary_in_position_size_and_orientation(hearts):
    labs = [label for _, label in hearts.values()]
    cents = np.array([_centroid_mm(lab, lab.data > 0) for lab in labs])
    vols = np.array([np.count_nonzero(lab.data == LV) for lab in labs])
    axes = []
    for lab in labs:
        pts = np.argwhere(lab.data == LV).astype(float)
        w, v = np.linalg.eigh(np.cov(pts.T))
        axes.append(v[:, -1])  # LV long axis
    assert np.ptp(cents, axis=0).max() > 5.0  # mm
    assert vols.max() > 1.15 * vols.min()
    angles = [np.degrees(np.arccos(min(1.0, abs(axes[0] @ a)))) for a in axes[1:]]
    assert max(angles) > 5.0


# --------------------------------------------------------------------------------------------
# Dataset writer


def test_write_heart_dataset_layout_roundtrip_and_skip(tmp_path):
    calls = []
    ids = write_heart_dataset(tmp_path, 2, seed=7, progress=lambda *a: calls.append(a))
    assert ids == ["heart_000", "heart_001"]
    assert [(d, t) for d, t, _ in calls] == [(1, 2), (2, 2)]
    labels = []
    for cid in ids:
        image, label = load_pair(
            tmp_path / cid / f"{cid}-image.nii.gz", tmp_path / cid / f"{cid}-label.nii.gz"
        )
        assert image.shape == (64, 64, 64)
        np.testing.assert_allclose(image.spacing, (3.0, 3.0, 3.0))
        np.testing.assert_allclose(image.affine, label.affine)
        assert label.present_labels() == [1, 2, 3, 4, 5]
        labels.append(label.data)
    assert not np.array_equal(labels[0], labels[1])
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["layout"] == "totalseg"
    assert meta["labels"] == {
        "0": "background",
        "1": "LA",
        "2": "LV",
        "3": "RA",
        "4": "RV",
        "5": "myocardium",
    }

    # second call: nothing rewritten
    files = sorted(tmp_path.glob("heart_*/*.nii.gz"))
    stamps = [f.stat().st_mtime_ns for f in files]
    calls.clear()
    assert write_heart_dataset(tmp_path, 2, seed=7, progress=lambda *a: calls.append(a)) == ids
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert all("skipped" in msg for *_, msg in calls)

    # a lost file is regenerated identically: each case's seed depends only on (seed, i)
    lost = tmp_path / "heart_001" / "heart_001-label.nii.gz"
    lost.unlink()
    write_heart_dataset(tmp_path, 2, seed=7)
    _, again = load_pair(tmp_path / "heart_001" / "heart_001-image.nii.gz", lost)
    np.testing.assert_array_equal(again.data, labels[1])
    assert [f.stat().st_mtime_ns for f in files][:2] == stamps[:2]  # heart_000 untouched


def test_write_heart_dataset_indices_write_only_those_cases_identically(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    write_heart_dataset(full, 3, seed=7, shape=(24, 24, 24), spacing=6.0)
    calls = []
    ids = write_heart_dataset(
        part,
        3,
        seed=7,
        shape=(24, 24, 24),
        spacing=6.0,
        indices=[2],
        progress=lambda *a: calls.append(a),
    )
    assert ids == ["heart_002"] and [(d, t) for d, t, _ in calls] == [(1, 1)]
    assert sorted(p.name for p in part.iterdir()) == ["dataset.json", "heart_002"]
    assert json.loads((part / "dataset.json").read_text())["cases"] == ["heart_002"]
    for kind in ("image", "label"):
        a = load_image(full / "heart_002" / f"heart_002-{kind}.nii.gz").data
        b = load_image(part / "heart_002" / f"heart_002-{kind}.nii.gz").data
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"case numbers \[3\] are outside 0..2"):
        write_heart_dataset(part, 3, seed=7, indices=[3])


# --------------------------------------------------------------------------------------------
# Organ-like samples


def test_organ_samples_have_1_to_4_objects_inside_the_volume(organs):
    counts = set()
    for image, label in organs.values():
        present = label.present_labels()
        assert 1 <= len(present) <= 4
        assert present == list(range(1, len(present) + 1))
        assert all(np.count_nonzero(label.data == v) > 0 for v in present)
        assert not _on_border(label.data > 0)
        assert image.data.dtype == np.float32 and label.data.dtype == np.uint8
        assert -1024 <= image.data.min() and image.data.max() <= 3071
        counts.add(len(present))
    assert len(counts) >= 3  # the number of objects varies


def test_organ_sample_honours_n_objects_and_spacing():
    for n in (1, 4):
        _, label = make_organ_sample(3, n_objects=n, spacing=2.0)
        assert label.present_labels() == list(range(1, n + 1))
        np.testing.assert_allclose(label.spacing, (2.0, 2.0, 2.0))
    image, _ = make_organ_sample(3, shape=(32, 40, 24), spacing=(1.0, 1.0, 3.0))
    assert image.shape == (32, 40, 24)
    np.testing.assert_allclose(image.spacing, (1.0, 1.0, 3.0))
    with pytest.raises(ValueError):
        make_organ_sample(0, n_objects=5)


def test_organ_sample_is_deterministic(organs):
    image, label = make_organ_sample(4)
    np.testing.assert_array_equal(image.data, organs[4][0].data)
    np.testing.assert_array_equal(label.data, organs[4][1].data)
    np.testing.assert_array_equal(image.affine, organs[4][0].affine)
    assert not np.array_equal(organs[5][1].data, organs[4][1].data)


def test_organ_samples_vary_in_spacing_size_and_contrast(organs):
    spacings = np.array([image.spacing for image, _ in organs.values()])
    assert np.ptp(spacings[:, 0]) > 1.5  # random voxel size in 1-5 mm
    assert np.any(spacings[:, 2] > spacings[:, 0] * 1.2)  # some thick-slice volumes
    extents_mm, contrasts = [], []
    for image, label in organs.values():
        for v in label.present_labels():
            m = label.data == v
            pts = np.argwhere(m)
            extents_mm.append(((pts.max(0) - pts.min(0) + 1) * image.spacing).max())
            ring = ndi.binary_dilation(m, iterations=2) & ~ndi.binary_dilation(m)
            contrasts.append(
                abs(image.data[ndi.binary_erosion(m)].mean() - image.data[ring].mean())
                if ndi.binary_erosion(m).any()
                else np.nan
            )
    assert min(extents_mm) < 25 and max(extents_mm) > 50
    contrasts = np.array(contrasts)
    contrasts = contrasts[np.isfinite(contrasts)]
    assert np.mean(contrasts > 40) > 0.5  # most objects stand out
    assert np.any(contrasts < 40)  # and some must be found by their shape


def test_crossing_tube_runs_through_the_volume_and_the_rest_stays_inside():
    faces_seen, radii = set(), []
    for seed in range(8):
        image, label = make_organ_sample(seed, crossing_tube=True)
        tube = label.data == 1
        assert ndi.label(tube)[1] == 1  # one piece
        touched = [(a, i) for a in range(3) for i in (0, -1) if tube.take(i, axis=a).any()]
        assert len(touched) >= 2  # it enters and leaves the field of view
        faces_seen.update(a for a, _ in touched)
        # thin and long: its length through the volume far exceeds its calibre
        pts = np.argwhere(tube) * image.spacing
        length = np.ptp(pts, axis=0).max()
        radius = np.sqrt(tube.sum() * np.prod(image.spacing) / length / np.pi)
        radii.append(radius)
        assert length > 4 * 2 * radius
        others = label.data > 1
        assert not _on_border(others)  # the other objects stay fully inside
        assert label.present_labels() == list(range(1, label.data.max() + 1))
        assert abs(image.data[tube].mean() - image.data[ndi.binary_dilation(tube, iterations=3) & ~ndi.binary_dilation(tube)].mean()) > 5  # fmt: skip
    assert 2 in faces_seen  # mostly along the superior axis, as a spinal cord
    assert 1.5 < min(radii) and max(radii) < 12 and np.ptp(radii) > 1.5


def test_crossing_tube_samples_are_deterministic_and_leave_plain_samples_alone():
    a, la = make_organ_sample(2, crossing_tube=True)
    b, lb = make_organ_sample(2, crossing_tube=True)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(la.data, lb.data)
    plain, plain_lab = make_organ_sample(2)
    again, again_lab = make_organ_sample(2, crossing_tube=False)
    np.testing.assert_array_equal(plain.data, again.data)
    assert not _on_border(plain_lab.data > 0)
    assert not np.array_equal(plain_lab.data, la.data)


def test_write_tube_dataset_names_its_cases_and_tube(tmp_path):
    from core.synthetic import write_organ_dataset

    ids = write_organ_dataset(tmp_path, 2, seed=3, crossing_tube=True)
    assert ids == ["tube_000", "tube_001"]
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["labels"]["1"] == "crossing tube" and meta["name"] == "synthetic-tubes"
    _, label = load_pair(tmp_path / "tube_001" / "tube_001-image.nii.gz",
                         tmp_path / "tube_001" / "tube_001-label.nii.gz")  # fmt: skip
    assert _on_border(label.data == 1)


def test_synth_cli_writes_each_kind(tmp_path, capsys):
    from core.cli import main

    for kind, case in (("organs", "organ_000"), ("tubes", "tube_000")):
        assert main(["synth", "--kind", kind, "--cases", "1", "--out", str(tmp_path / kind)]) == 0
        assert (tmp_path / kind / case / f"{case}-label.nii.gz").is_file()
    assert "synth: 1 cases" in capsys.readouterr().out
