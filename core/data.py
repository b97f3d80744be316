"""A torch Dataset of 2D slices from the preprocessed cache (see ``docs/cache-format.md``).

One item is one cached slice, resized to a fixed size for batching, with one target class, a
simulated prompt for it, and the slice's pointmap (world mm of each pixel).

Geometry
--------
Everything an item holds is resampled from the cached slice through one ``(3, 3)`` matrix
``crop_affine`` mapping an output pixel ``(row, col, 1)`` to the cached slice pixel
``(row, col)`` (pixel centres at integer coordinates). It composes

1. a *letterbox*: the whole slice scaled by one factor so that it fits the output size, keeping
   its aspect ratio, centred, the rest padded (image with the slice minimum, i.e. background in
   every modality; labels with 0; pointmap with NaN); and
2. optionally a random augmentation (rotation, scale, shift about the output centre).

Images are resampled bilinearly, labels by nearest neighbour, pointmaps NaN-safely
(:func:`core.transforms.resize_pointmap`), so every output stays consistent with the others. A
point outside the cached slice's pixel area (``-0.5 .. n - 0.5``) is padding.
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from core.errors import InputError
from core.prompts import PROMPT_KINDS, make_prompt, render_prompt
from core.transforms import (
    AugmentParams,
    augment_matrix,
    letterbox_matrix,
    resize_pointmap,
    sample_augment,
    warp,
)

__all__ = [
    "SLICE_SAMPLING",
    "DataConfig",
    "SliceRef",
    "SliceDataset",
]

SLICE_SAMPLING = ("all", "central", "uniform", "random_axis")
_SLICE_KEYS = ("image", "label", "pointmap", "affine", "slice_idx", "axis", "gt_sdf_path")
_NAME_RE = re.compile(r"_a([0-2])_s(\d+)\.npz$")


@dataclass(frozen=True)
class DataConfig:
    """Options of :class:`SliceDataset`.

    Attributes
    ----------
    preprocess_crop_size : (h, w) output size of every item
    prompt_kinds : kinds of :data:`core.prompts.PROMPT_KINDS` drawn uniformly per item
    point_jitter : :func:`core.prompts.make_prompt` jitter in [0, 1] (0 = the central click)
    prompt_sigma : width in output pixels of the rendered point heatmaps
    augment : apply the random geometric and intensity augmentation
    rotate_deg : rotation drawn in ``[-rotate_deg, rotate_deg]`` degrees
    scale : zoom drawn in ``[scale[0], scale[1]]`` (> 1 enlarges the content)
    shift_frac : shift per axis drawn in ``[-shift_frac, shift_frac]`` of the output size
    intensity_jitter : ``j`` in [0, 0.5]: image ``* U(1 - j, 1 + j) + U(-j, j)`` (normalised
        units; the padding too, so it stays the slice's background)
    seed : base seed; item ``i`` of epoch ``e`` draws from ``default_rng([seed, e, i])``
    classes : target classes to use (None = every class); slices with none of them are dropped
    axes : slice axes to use (None = all cached)
    slice_sampling : None or ``"all"`` (every cached slice), ``"central"`` (per case and axis the
        slice nearest the target foreground centroid), ``"uniform"`` (``slices_per_axis``
        evenly spaced per case and axis), ``"random_axis"`` (``slices_per_axis x`` number of
        axes per case, each on a random axis; seeded by seed and case id)
    slices_per_axis : see ``slice_sampling``
    """

    preprocess_crop_size: tuple[int, int] = (128, 128)
    prompt_kinds: tuple[str, ...] = ("point",)
    point_jitter: float = 0.2
    prompt_sigma: float = 2.0
    augment: bool = False
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    shift_frac: float = 0.05
    intensity_jitter: float = 0.1
    seed: int = 0
    classes: tuple[int, ...] | None = None
    axes: tuple[int, ...] | None = None
    slice_sampling: str | None = None
    slices_per_axis: int = 8

    def __post_init__(self):
        def fix(name, value):  # frozen: lists from a YAML/CLI become tuples
            object.__setattr__(self, name, value)

        size = tuple(int(s) for s in np.broadcast_to(self.preprocess_crop_size, (2,)))
        _require(min(size) >= 4, f"preprocess_crop_size must be >= 4 pixels, got {size}")
        fix("preprocess_crop_size", size)
        kinds = (self.prompt_kinds,) if isinstance(self.prompt_kinds, str) else self.prompt_kinds
        fix("prompt_kinds", tuple(kinds))
        _require(
            self.prompt_kinds and all(k in PROMPT_KINDS for k in self.prompt_kinds),
            f"prompt_kinds must be a non-empty subset of {PROMPT_KINDS}, got {kinds}",
        )
        # NaN fails every comparison, so it is rejected too.
        for name, lo, hi in [
            ("point_jitter", 0, 1),
            ("rotate_deg", 0, 180),
            ("shift_frac", 0, 0.5),
            ("intensity_jitter", 0, 0.5),
        ]:
            v = getattr(self, name)
            _require(lo <= v <= hi, f"{name} must be in [{lo}, {hi}], got {v}")
        _require(self.prompt_sigma > 0, f"prompt_sigma must be > 0, got {self.prompt_sigma}")
        scale = tuple(float(s) for s in self.scale)
        _require(
            len(scale) == 2 and 0 < scale[0] <= scale[1],
            f"scale must be (lo, hi) with 0 < lo <= hi, got {self.scale}",
        )
        fix("scale", scale)
        fix("seed", int(self.seed))
        fix("slices_per_axis", int(self.slices_per_axis))
        _require(
            self.slices_per_axis >= 1, f"slices_per_axis must be >= 1, got {self.slices_per_axis}"
        )
        if self.classes is not None:
            fix("classes", tuple(sorted({int(c) for c in self.classes})))
            _require(
                self.classes and self.classes[0] >= 1,
                f"classes must be non-empty class ids >= 1, got {self.classes}",
            )
        if self.axes is not None:
            fix("axes", tuple(sorted({int(a) for a in self.axes})))
            _require(
                self.axes and set(self.axes) <= {0, 1, 2},
                f"axes must be a non-empty subset of (0, 1, 2), got {self.axes}",
            )
        _require(
            self.slice_sampling is None or self.slice_sampling in SLICE_SAMPLING,
            f"slice_sampling must be None or one of {SLICE_SAMPLING}, got {self.slice_sampling!r}",
        )


def _require(ok, message: str) -> None:
    if not ok:
        raise ValueError(message)


# --------------------------------------------------------------------------------------------
# The Dataset


@dataclass(frozen=True)
class SliceRef:
    """One cached slice of the index: ``SliceDataset.slices[i]`` is item ``i``'s slice."""

    case_id: str
    path: Path
    axis: int
    slice_idx: int


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"unreadable {what} ({exc})") from exc
    if not isinstance(obj, dict):
        raise InputError(path, f"{what} is not a JSON object")
    return obj


def _slice_axis_idx(path: Path) -> tuple[int, int]:
    m = _NAME_RE.search(path.name)
    if m:  # the documented name <case>_a<axis>_s<idx>.npz saves opening the file
        return int(m.group(1)), int(m.group(2))
    with np.load(path) as z:
        return int(z["axis"]), int(z["slice_idx"])


def _present(label: np.ndarray, classes) -> list[int]:
    vals = [int(v) for v in np.unique(label) if v != 0]
    return vals if classes is None else [v for v in vals if v in classes]


class SliceDataset(Dataset):
    """One item per cached 2D slice, at a fixed size, with a target class and its prompt.

    Parameters
    ----------
    cache_dir : folder written by ``sam3d preprocess`` (with ``manifest.json``)
    cfg : DataConfig (default options when None)
    case_ids : cases to use (default: every case of the manifest); cases not finished
        (status not ``"done"`` or no ``meta.json``) are skipped and listed in ``skipped_cases``.

    Items
    -----
    A dict with, for an output size ``(h, w)``:
    ``image`` (1, h, w) float32; ``mask2d`` (1, h, w) float32 target-class mask; ``prompt``
    (4, h, w) float32 (:data:`core.prompts.PROMPT_CHANNELS`); ``prompt_kind`` str; ``pointmap``
    (3, h, w) float32 world mm, NaN where invalid; ``pointmap_valid`` (1, h, w) bool (= the
    resized foreground); ``case_id`` str; ``class_id``, ``axis``, ``slice_idx`` int; ``affine``
    (4, 4) float64 voxel -> world; ``crop_affine`` (3, 3) float64 output pixel -> cached slice
    pixel; ``sdf_path`` str, absolute path of the case's ``sdf.npy``.

    Notes
    -----
    Randomness (class, prompt kind, augmentation, click jitter) comes from
    ``default_rng([cfg.seed, epoch, index])``: an epoch is reproducible whatever the workers.
    Call :meth:`set_epoch` before each epoch (DataLoader workers copy the dataset when they
    start, so with ``persistent_workers=True`` the epoch would not reach them).

    Raises
    ------
    InputError
        Missing cache folder or manifest, unknown case ids, a listed slice file missing, a class
        above the cache's number of classes, or no slice left after the filters.
    """

    def __init__(self, cache_dir, *, cfg: DataConfig | None = None, case_ids=None):
        self.cache_dir = Path(cache_dir).absolute()
        self.cfg = cfg = DataConfig() if cfg is None else cfg
        self.epoch = 0
        if not self.cache_dir.is_dir():
            raise InputError(self.cache_dir, "cache folder not found (run `sam3d preprocess`)")
        mpath = self.cache_dir / "manifest.json"
        self.manifest = _read_json(mpath, "manifest.json (not a preprocessed cache?)")
        cases = self.manifest.get("cases")
        if not isinstance(cases, dict):
            raise InputError(mpath, "manifest has no 'cases' table")
        k = self.manifest.get("params", {}).get("classes")
        if cfg.classes is not None and k is not None and max(cfg.classes) > int(k):
            raise InputError(mpath, f"classes {cfg.classes} go above the cache's {k} classes")
        wanted = sorted(cases) if case_ids is None else [str(c) for c in case_ids]
        unknown = [c for c in wanted if c not in cases]
        if unknown:
            raise InputError(mpath, f"case(s) not in the cache: {', '.join(unknown)}")
        self.skipped_cases: list[str] = []
        refs = []
        for cid in wanted:
            meta_path = self.cache_dir / "cases" / cid / "meta.json"
            if (cases[cid] or {}).get("status") != "done" or not meta_path.is_file():
                self.skipped_cases.append(cid)
                continue
            meta = _read_json(meta_path, "meta.json")
            if cfg.classes is not None and "classes_present" in meta:
                if not set(cfg.classes) & {int(c) for c in meta["classes_present"]}:
                    continue  # none of the target classes anywhere in this case
            for rel in meta.get("slices", []):
                path = self.cache_dir / rel
                if not path.is_file():
                    raise InputError(path, "slice file listed in meta.json is missing")
                axis, idx = _slice_axis_idx(path)
                if cfg.axes is None or axis in cfg.axes:
                    refs.append(SliceRef(cid, path, axis, idx))
        if cfg.classes is not None:
            refs = [r for r in refs if self._classes_on(r)]
        self.slices: list[SliceRef] = self._subselect(refs)
        if not self.slices:
            raise InputError(self.cache_dir, "no slices to use with these cases and filters")

    def _classes_on(self, ref: SliceRef) -> list[int]:
        with np.load(ref.path) as z:
            return _present(z["label"], self.cfg.classes)

    def _subselect(self, refs: list[SliceRef]) -> list[SliceRef]:
        mode, n = self.cfg.slice_sampling or "all", int(self.cfg.slices_per_axis)
        if mode == "all":
            return refs
        groups: dict[tuple, list[SliceRef]] = defaultdict(list)
        for r in refs:
            groups[(r.case_id, r.axis) if mode != "random_axis" else (r.case_id,)].append(r)
        out = []
        for key, group in groups.items():
            group = sorted(group, key=lambda r: (r.axis, r.slice_idx))
            if mode == "uniform":
                picks = np.unique(np.floor(np.linspace(0, len(group) - 1, n) + 0.5).astype(int))
                out += [group[p] for p in picks]
            elif mode == "central":
                out.append(self._central(group))
            else:  # random_axis: draw an axis (among those with slices left), then a slice
                rng = np.random.default_rng([self.cfg.seed, zlib.crc32(key[0].encode())])
                by_axis = defaultdict(list)
                for r in group:
                    by_axis[r.axis].append(r)
                picked = []
                for _ in range(min(n * len(by_axis), len(group))):
                    axes = sorted(a for a in by_axis if by_axis[a])
                    pool = by_axis[axes[int(rng.integers(len(axes)))]]
                    picked.append(pool.pop(int(rng.integers(len(pool)))))
                out += sorted(picked, key=lambda r: (r.axis, r.slice_idx))
        return sorted(out, key=lambda r: (r.case_id, r.axis, r.slice_idx))

    def _central(self, group: list[SliceRef]) -> SliceRef:
        # Centroid along the axis of the target foreground over the cached slices: with a
        # cache built with "all" that is the volume's foreground centroid.
        weights = []
        for r in group:
            with np.load(r.path) as z:
                lab = z["label"]
            fg = lab > 0 if self.cfg.classes is None else np.isin(lab, self.cfg.classes)
            weights.append(float(fg.sum()))
        idx = np.array([r.slice_idx for r in group], dtype=np.float64)
        w = np.array(weights)
        centre = float((idx * w).sum() / w.sum()) if w.sum() > 0 else float(idx.mean())
        return group[int(np.argmin(np.abs(idx - centre)))]  # first = lowest index on a tie

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the next items use."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} slices")
        i = int(i) % len(self)
        rng = np.random.default_rng([self.cfg.seed, self.epoch, i])
        # A structure smaller than an output pixel can vanish in the resize: then fall back to
        # the next slices rather than kill a training run.
        for j in range(len(self)):
            item = self._item(self.slices[(i + j) % len(self)], rng)
            if item is not None:
                return item
            warnings.warn(
                f"{self.slices[(i + j) % len(self)].path}: target classes vanish at size "
                f"{self.cfg.preprocess_crop_size}; using the next slice",
                stacklevel=2,
            )
        raise InputError(self.cache_dir, "every slice's target classes vanish at this size")

    def _load(self, ref: SliceRef) -> dict:
        try:
            with np.load(ref.path) as z:
                missing = [k for k in _SLICE_KEYS if k not in z.files]
                if missing:
                    raise InputError(ref.path, f"slice file lacks {', '.join(missing)}")
                return {k: z[k] for k in _SLICE_KEYS}
        except InputError:
            raise
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            raise InputError(ref.path, f"unreadable slice file ({exc})") from exc

    def _item(self, ref: SliceRef, rng: np.random.Generator) -> dict | None:
        cfg, size = self.cfg, self.cfg.preprocess_crop_size
        d = self._load(ref)
        label = d["label"]
        present = _present(label, cfg.classes)
        if not present:
            raise InputError(ref.path, f"slice holds none of the target classes {cfg.classes}")
        kind = cfg.prompt_kinds[int(rng.integers(len(cfg.prompt_kinds)))]
        base = letterbox_matrix(label.shape, size)
        # Up to 3 augmentations, then none, per class in random order: the first that keeps
        # some of the class in view wins.
        ranges = dict(
            rotate_deg=cfg.rotate_deg,
            scale=cfg.scale,
            shift_frac=cfg.shift_frac,
            intensity_jitter=cfg.intensity_jitter,
        )
        draws = (
            [sample_augment(rng, out_shape=size, **ranges) for _ in range(3)] if cfg.augment else []
        )
        for cls in rng.permutation(present):
            for params in [*draws, AugmentParams()]:
                M = base @ augment_matrix(params, size)
                lab = warp(label, M, size, order=0, cval=0)
                mask = lab == cls
                if mask.any():
                    return self._finish(ref, d, M, params, int(cls), mask, kind, rng)
        return None

    def _finish(self, ref, d, M, params, cls, mask, kind, rng) -> dict:
        cfg, size = self.cfg, self.cfg.preprocess_crop_size
        img = np.asarray(d["image"], dtype=np.float32)
        img = warp(img, M, size, order=1, cval=float(img.min()))
        img = img * params.intensity_mul + params.intensity_add  # identity when not augmenting
        pm = resize_pointmap(d["pointmap"], size, matrix=M)
        prompt = make_prompt(mask, kind, rng=rng, jitter=cfg.point_jitter)
        chans = render_prompt(prompt, size, sigma=cfg.prompt_sigma)
        return {
            "image": torch.from_numpy(img.astype(np.float32))[None],
            "mask2d": torch.from_numpy(mask.astype(np.float32))[None],
            "prompt": torch.from_numpy(chans),
            "prompt_kind": kind,
            "pointmap": torch.from_numpy(np.ascontiguousarray(pm.transpose(2, 0, 1))),
            "pointmap_valid": torch.from_numpy(np.isfinite(pm).all(axis=-1))[None],
            "case_id": ref.case_id,
            "class_id": cls,
            "axis": int(d["axis"]),
            "slice_idx": int(d["slice_idx"]),
            "affine": torch.from_numpy(np.asarray(d["affine"], dtype=np.float64)),
            "crop_affine": torch.from_numpy(np.asarray(M, dtype=np.float64)),
            "sdf_path": str(self.cache_dir / str(d["gt_sdf_path"])),
        }
