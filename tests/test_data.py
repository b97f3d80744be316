"""Tests of core.data: the slice Dataset over a tiny hand-written cache (docs/cache-format.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from core.data import DataConfig, SliceDataset
from core.errors import InputError
from core.geometry import slice_pointmap, slice_voxel_index
from core.io import voxel_to_world
from core.prompts import PROMPT_CHANNELS
from core.transforms import AugmentParams, augment_matrix, letterbox_matrix, resize_pointmap, warp

S = (24, 24)


def oblique_affine(spacing=(1.5, 1.0, 2.0), deg=20.0, shift=(-30.0, 12.0, 5.0)):
    t = math.radians(deg)
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing)
    a[:3, 3] = shift
    return a


def make_volume(shape, seed):
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    c = (np.array(shape) - 1) / 2
    label = np.zeros(shape, dtype=np.uint8)
    ell = ((ii - c[0]) / 3.5) ** 2 + ((jj - c[1]) / 4.5) ** 2 + ((kk - c[2]) / 4.0) ** 2 <= 1
    label[ell] = 1
    label[1:4, 1:4, -5:-1] = 2
    image = np.random.default_rng(seed).random(shape).astype(np.float32)
    return image, label


def write_case(root, cid, image, label, affine, *, only=None):
    """Write a case as `sam3d preprocess --slice_sampling all` would; return its slice paths."""
    casedir = root / "cases" / cid
    casedir.mkdir(parents=True)
    np.save(casedir / "sdf.npy", np.zeros((2, 1, 1, 1), np.float32))
    rels = []
    for axis in range(3):
        for idx in range(label.shape[axis]):
            lab = np.take(label, idx, axis=axis)
            if not lab.any() or (only is not None and (axis, idx) not in only):
                continue
            rel = f"slices/{cid}/{cid}_a{axis}_s{idx:03d}.npz"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                root / rel,
                image=np.take(image, idx, axis=axis),
                mask=(lab > 0).astype(np.uint8),
                label=lab,
                pointmap=slice_pointmap(affine, label.shape, axis, idx, valid=lab > 0),
                affine=affine,
                slice_idx=np.int64(idx),
                axis=np.int64(axis),
                gt_sdf_path=np.array(f"cases/{cid}/sdf.npy"),
                case_id=np.array(cid),
            )
            rels.append(rel)
    meta = {
        "case_id": cid,
        "affine": affine.tolist(),
        "spacing": np.linalg.norm(affine[:3, :3], axis=0).tolist(),
        "shape": list(label.shape),
        "classes_present": sorted(int(v) for v in np.unique(label) if v),
        "slices": rels,
    }
    (casedir / "meta.json").write_text(json.dumps(meta))
    return rels


def write_manifest(root, statuses, k=2):
    params = {"classes": k, "spacing": 1.0, "modality": "ct", "axes": [0, 1, 2]}
    params["slice_sampling"] = "all"
    cases = {cid: {"status": st} for cid, st in statuses.items()}
    (root / "manifest.json").write_text(json.dumps({"params": params, "cases": cases}))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    vols = {"c1": ((10, 12, 14), oblique_affine()), "c2": ((11, 9, 13), oblique_affine(deg=-35))}
    info = {}
    for seed, (cid, (shape, affine)) in enumerate(vols.items()):
        image, label = make_volume(shape, seed)
        info[cid] = (image, label, affine, write_case(root, cid, image, label, affine))
    # c3 failed; c4 was killed before its meta.json (listed as done, but no meta): both skipped.
    (root / "cases" / "c4").mkdir(parents=True)
    write_manifest(root, {"c1": "done", "c2": "done", "c3": "failed", "c4": "done"})
    return root, info


def world_at(affine, axis, idx, rows, cols):
    return voxel_to_world(affine, slice_voxel_index(axis, idx, rows, cols).astype(np.float64))


def source_coords(matrix, shape):
    rr, cc = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    return (matrix[0, 0] * rr + matrix[0, 1] * cc + matrix[0, 2],
            matrix[1, 0] * rr + matrix[1, 1] * cc + matrix[1, 2])  # fmt: skip


def all_neighbours_valid(valid, sr, sc):
    """Whether the 4 bilinear neighbours of each source point are valid pixels."""
    pad = np.pad(valid, 1)
    r0, c0 = np.floor(sr).astype(int) + 1, np.floor(sc).astype(int) + 1
    r0, c0 = np.clip(r0, 0, pad.shape[0] - 2), np.clip(c0, 0, pad.shape[1] - 2)
    return pad[r0, c0] & pad[r0 + 1, c0] & pad[r0, c0 + 1] & pad[r0 + 1, c0 + 1]


# --------------------------------------------------------------------------------------------
# resize_pointmap and the geometry helpers


@pytest.mark.parametrize("matrix_kind", ["stretch", "rotated"])
def test_resize_pointmap_keeps_affine_plane_and_nans(matrix_kind):
    affine = oblique_affine()
    rr, cc = np.mgrid[:40, :30]
    valid = (rr - 20) ** 2 / 15**2 + (cc - 14) ** 2 / 11**2 <= 1
    pm = slice_pointmap(affine, (7, 40, 30), 0, 3, valid=valid)
    out_shape = (17, 23)
    if matrix_kind == "stretch":
        M, out = None, resize_pointmap(pm, out_shape)
        M = np.array([[40 / 17, 0, 20 / 17 - 0.5], [0, 30 / 23, 15 / 23 - 0.5], [0, 0, 1]])
    else:
        M = letterbox_matrix((40, 30), out_shape) @ augment_matrix(
            AugmentParams(rotate_deg=25, scale=1.2, shift=(1.5, -2.0)), out_shape
        )
        out = resize_pointmap(pm, out_shape, matrix=M)
    assert out.shape == out_shape + (3,) and out.dtype == np.float32
    ok = np.isfinite(out).all(axis=-1)
    # Valid exactly where the nearest source pixel is (as labels are resampled); NaN elsewhere.
    assert np.array_equal(ok, warp(valid.astype(np.uint8), M, out_shape, order=0) > 0)
    assert np.isnan(out[~ok]).all() and ok.sum() > 20
    # Every valid value lies on the slice's plane: no NaN and no zero padding leaked in.
    normal = np.cross(affine[:3, 1], affine[:3, 2])
    p0 = world_at(affine, 0, 3, 0, 0)
    assert np.abs((out[ok] - p0) @ normal / np.linalg.norm(normal)).max() < 1e-3
    # Exactly the affine value where all bilinear neighbours are valid; within a pixel elsewhere.
    sr, sc = source_coords(M, out_shape)
    err = np.linalg.norm(out - world_at(affine, 0, 3, sr, sc), axis=-1)
    inner = ok & all_neighbours_valid(valid, sr, sc)
    assert inner.sum() > 10 and err[inner].max() < 1e-3
    assert err[ok].max() < 1.0 * max(np.linalg.norm(affine[:3, :3], axis=0))


def test_resize_pointmap_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        resize_pointmap(np.zeros((4, 4)), (2, 2))


def test_letterbox_pads_centred():
    M = letterbox_matrix((10, 20), (16, 16))  # 1.25 input px per output px: 8 rows + 2 x 4 pad
    assert np.allclose(M @ [3.5, -0.5, 1], [-0.5, -0.5, 1])
    assert np.allclose(M @ [11.5, 15.5, 1], [9.5, 19.5, 1])
    img = np.ones((10, 20), np.float32)
    out = warp(img, M, (16, 16), order=1, cval=-7.0)
    assert (out[:4] == -7).all() and (out[12:] == -7).all() and (out[4:12] == 1).all()


def test_augment_matrix_identity_and_inverse_motion():
    assert np.allclose(augment_matrix(AugmentParams(), (9, 9)), np.eye(3))
    M = augment_matrix(AugmentParams(rotate_deg=90, scale=2.0, shift=(1.0, 0.0)), (9, 9))
    # The centre moved by the shift comes from the centre.
    assert np.allclose(M @ [5.0, 4.0, 1], [4.0, 4.0, 1])


# --------------------------------------------------------------------------------------------
# SliceDataset


def test_index_and_item_contents(cache):
    root, info = cache
    ds = SliceDataset(root, cfg=DataConfig(preprocess_crop_size=S, point_jitter=0.0))
    assert len(ds) == sum(len(v[3]) for v in info.values())
    assert ds.skipped_cases == ["c3", "c4"]
    item = ds[0]
    for key, shape, dtype in [
        ("image", (1, *S), torch.float32),
        ("mask2d", (1, *S), torch.float32),
        ("prompt", (len(PROMPT_CHANNELS), *S), torch.float32),
        ("pointmap", (3, *S), torch.float32),
        ("pointmap_valid", (1, *S), torch.bool),
        ("affine", (4, 4), torch.float64),
        ("crop_affine", (3, 3), torch.float64),
    ]:
        assert item[key].shape == shape and item[key].dtype == dtype, key
    assert item["case_id"] == "c1" and isinstance(item["class_id"], int)
    assert item["prompt_kind"] == "point"
    valid = item["pointmap_valid"][0].numpy()
    assert np.array_equal(valid, torch.isfinite(item["pointmap"]).all(0).numpy())
    assert (item["mask2d"][0].numpy().astype(bool) <= valid).all()
    pos = item["prompt"][0].numpy()
    r, c = np.unravel_index(pos.argmax(), pos.shape)
    assert item["mask2d"][0, r, c] == 1
    assert item["sdf_path"] == str(root / "cases" / "c1" / "sdf.npy")
    assert np.allclose(item["affine"].numpy(), info["c1"][2])


def check_consistent(root, item, size=S):
    """The item's arrays are the cached slice resampled through its crop_affine."""
    z = np.load(root / f"slices/{item['case_id']}/{item['case_id']}_a{item['axis']}"
                       f"_s{item['slice_idx']:03d}.npz")  # fmt: skip
    M = item["crop_affine"].numpy()
    lab = warp(z["label"], M, size, order=0)
    mask = item["mask2d"][0].numpy()
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert np.array_equal(mask.astype(bool), lab == item["class_id"]) and mask.any()
    ok = item["pointmap_valid"][0].numpy()
    assert np.array_equal(ok, lab > 0)
    sr, sc = source_coords(M, size)
    expect = world_at(z["affine"], item["axis"], item["slice_idx"], sr, sc)
    err = np.linalg.norm(item["pointmap"].numpy().transpose(1, 2, 0) - expect, axis=-1)
    inner = ok & all_neighbours_valid(z["label"] > 0, sr, sc)
    assert err[inner].max(initial=0) < 1e-3
    assert err[ok].max() < max(np.linalg.norm(z["affine"][:3, :3], axis=0))
    pos = item["prompt"][0].numpy()
    if item["prompt_kind"] in ("point", "mask+point"):
        assert mask[np.unravel_index(pos.argmax(), pos.shape)] == 1


def test_no_augmentation_is_letterbox_and_deterministic(cache):
    root, _ = cache
    cfg = DataConfig(preprocess_crop_size=S, prompt_kinds=("point", "box", "mask"))
    ds, ds2 = SliceDataset(root, cfg=cfg), SliceDataset(root, cfg=cfg)
    for i in range(0, len(ds), 7):
        a, b = ds[i], ds2[i]
        shape = np.load(ds.slices[i].path)["label"].shape
        assert np.allclose(a["crop_affine"].numpy(), letterbox_matrix(shape, S))
        check_consistent(root, a)
        for key in a:
            va, vb = a[key], b[key]
            if isinstance(va, torch.Tensor):
                np.testing.assert_array_equal(va.numpy(), vb.numpy())
            else:
                assert va == vb


def test_augmentation_is_consistent(cache):
    root, _ = cache
    cfg = DataConfig(
        preprocess_crop_size=S, augment=True, rotate_deg=30, scale=(0.8, 1.25),
        shift_frac=0.1, prompt_kinds=("point", "mask+point"), seed=3,
    )  # fmt: skip
    ds = SliceDataset(root, cfg=cfg)
    moved = 0
    for i in range(0, len(ds), 3):
        item = ds[i]
        check_consistent(root, item)
        shape = np.load(ds.slices[i].path)["label"].shape
        moved += not np.allclose(item["crop_affine"].numpy(), letterbox_matrix(shape, S))
    assert moved > 0
    # Reproducible per epoch, different across epochs.
    a = ds[5]["crop_affine"]
    assert torch.equal(a, ds[5]["crop_affine"])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[5]["crop_affine"])
    ds.set_epoch(0)
    assert torch.equal(a, ds[5]["crop_affine"])


def test_dataloader_batches(cache):
    root, _ = cache
    ds = SliceDataset(root, cfg=DataConfig(preprocess_crop_size=S, augment=True))
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=0, shuffle=False)))
    assert batch["image"].shape == (2, 1, *S)
    assert batch["pointmap"].shape == (2, 3, *S)
    assert batch["affine"].shape == (2, 4, 4) and batch["affine"].dtype == torch.float64
    assert batch["case_id"] == ["c1", "c1"] and batch["class_id"].shape == (2,)
    assert len(batch["sdf_path"]) == 2


def test_filters_axes_classes_cases(cache):
    root, info = cache
    ds = SliceDataset(root, cfg=DataConfig(preprocess_crop_size=S, axes=(2,)))
    assert {r.axis for r in ds.slices} == {2}
    assert len(ds) == sum(1 for v in info.values() for p in v[3] if "_a2_" in p)
    ds = SliceDataset(root, cfg=DataConfig(preprocess_crop_size=S, classes=(2,)))
    expect = sum(1 for v in info.values() for p in v[3] if 2 in np.load(root / p)["label"])
    assert len(ds) == expect and 0 < expect < 40
    assert all(ds[i]["class_id"] == 2 for i in range(0, len(ds), 4))
    ds = SliceDataset(root, cfg=DataConfig(preprocess_crop_size=S), case_ids=["c2", "c3"])
    assert {r.case_id for r in ds.slices} == {"c2"} and ds.skipped_cases == ["c3"]


def test_slice_sampling_counts(cache):
    root, info = cache

    def make(mode, **kw):
        cfg = DataConfig(preprocess_crop_size=S, slice_sampling=mode, **kw)
        return SliceDataset(root, cfg=cfg).slices

    n_all = sum(len(v[3]) for v in info.values())
    assert len(make("all")) == len(make(None)) == n_all
    central = make("central")
    assert len(central) == 2 * 3
    for r in central:  # the cached slice nearest the foreground centroid on that axis
        label = info[r.case_id][1]
        centroid = np.nonzero(label)[r.axis].mean()
        idx = sorted({int(i) for i in np.nonzero(label)[r.axis]})
        assert abs(r.slice_idx - centroid) == min(abs(i - centroid) for i in idx)
    uniform = make("uniform", slices_per_axis=4)
    assert len(uniform) == 2 * 3 * 4
    for cid, ax in [("c1", 0), ("c2", 2)]:
        got = [r.slice_idx for r in uniform if r.case_id == cid and r.axis == ax]
        idx = sorted({int(i) for i in np.nonzero(info[cid][1])[ax]})
        assert got[0] == idx[0] and got[-1] == idx[-1] and len(set(got)) == 4
    assert len(make("uniform", slices_per_axis=100)) == n_all
    rnd = make("random_axis", slices_per_axis=2)
    assert len(rnd) == 2 * 2 * 3 and len({r.path for r in rnd}) == len(rnd)
    assert rnd == make("random_axis", slices_per_axis=2)
    assert {r.path for r in rnd} != {r.path for r in make("random_axis", slices_per_axis=2, seed=9)}
    assert len(make("random_axis", slices_per_axis=100)) == n_all


def test_vanishing_structure_falls_back(tmp_path):
    shape = (3, 40, 40)
    label = np.zeros(shape, np.uint8)
    label[0, 20, 20] = 1  # one pixel, between the samples of a 40 -> 4 resize
    label[1, 5:35, 5:35] = 1
    write_case(tmp_path, "t", np.zeros(shape, np.float32), label, np.eye(4), only={(0, 0), (0, 1)})
    write_manifest(tmp_path, {"t": "done"}, k=1)
    ds = SliceDataset(tmp_path, cfg=DataConfig(preprocess_crop_size=(4, 4)))
    with pytest.warns(UserWarning, match="vanish"):
        assert ds[0]["slice_idx"] == 1


def test_cache_errors(cache, tmp_path):
    root, _ = cache
    with pytest.raises(InputError, match="cache folder not found") as e:
        SliceDataset(tmp_path / "nope")
    assert e.value.path == str(tmp_path / "nope")
    with pytest.raises(InputError, match="manifest.json") as e:
        SliceDataset(tmp_path)
    assert e.value.path.endswith("manifest.json")
    with pytest.raises(InputError, match="not in the cache: zz"):
        SliceDataset(root, case_ids=["c1", "zz"])
    with pytest.raises(InputError, match="above the cache's 2 classes"):
        SliceDataset(root, cfg=DataConfig(classes=(3,)))
    with pytest.raises(InputError, match="no slices"):
        SliceDataset(root, case_ids=["c3"])
    image, label = make_volume((6, 6, 6), 0)
    rels = write_case(tmp_path, "m", image, label, np.eye(4))
    write_manifest(tmp_path, {"m": "done"})
    (tmp_path / rels[1]).unlink()
    with pytest.raises(InputError, match="missing") as e:
        SliceDataset(tmp_path)
    assert e.value.path == str(tmp_path / rels[1])


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"preprocess_crop_size": (2, 64)}, "preprocess_crop_size"),
        ({"prompt_kinds": ("point", "lasso")}, "prompt_kinds"),
        ({"prompt_kinds": ()}, "prompt_kinds"),
        ({"point_jitter": 1.5}, "point_jitter"),
        ({"scale": (1.2, 0.8)}, "scale"),
        ({"shift_frac": 0.7}, "shift_frac"),
        ({"intensity_jitter": -0.1}, "intensity_jitter"),
        ({"classes": (0, 1)}, "classes"),
        ({"axes": (3,)}, "axes"),
        ({"slice_sampling": "every"}, "slice_sampling"),
        ({"slices_per_axis": 0}, "slices_per_axis"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kw)


def test_config_normalises():
    cfg = DataConfig(preprocess_crop_size=[32, 48], classes=[2, 1, 2], axes=[2, 0], scale=[1, 1])
    assert cfg.preprocess_crop_size == (32, 48) and cfg.classes == (1, 2) and cfg.axes == (0, 2)
    assert DataConfig(prompt_kinds="box").prompt_kinds == ("box",)
    assert hash(cfg) is not None  # frozen and hashable


def test_non_square_output(cache):
    root, _ = cache
    ds = SliceDataset(root, cfg=DataConfig(preprocess_crop_size=(16, 32), augment=True))
    for i in (3, 40):
        item = ds[i]
        assert item["image"].shape == (1, 16, 32) and item["pointmap"].shape == (3, 16, 32)
        check_consistent(root, item, size=(16, 32))


def test_corrupt_slice_file_names_it(tmp_path):
    image, label = make_volume((6, 6, 6), 0)
    rels = write_case(tmp_path, "k", image, label, np.eye(4))
    write_manifest(tmp_path, {"k": "done"})
    ds = SliceDataset(tmp_path, cfg=DataConfig(preprocess_crop_size=S))
    (tmp_path / rels[0]).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match="unreadable slice file") as e:
        ds[0]
    assert e.value.path == str(tmp_path / rels[0])
