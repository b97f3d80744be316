"""Training examples: (volume, class, simulated prompts, cube) -> model inputs and targets.

One item per cached slice (``docs/cache-format.md``): a class present on that slice is the
target, a click is simulated on it (the interior point of its largest component, jittered), a
cube is placed as the engine places one (``core.engine.CubePolicy``): either its first pass,
centred on the prompt at the default spacing, or a zoomed cube around the organ sized from a
deliberately noisy extent (the engine zooms on its own predicted extent, so the cube's scale
must not give the organ's size away), and the inputs come from ``core.samples`` — the same
code the engine uses. Random parts, all seeded by ``(seed, epoch, index)``:

- mode: "volume" or "slice" (modality dropout: the same weights serve both);
- prompt kind: point (most), box, mask, mask+point on the reference slice;
- refinement: sometimes a perturbed "previous" prediction and corrective clicks at its
  largest errors (positive on a miss, negative on a false positive), as a user would click;
- intensity jitter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from core.clicks import AXIAL_AXIS, Box, Click, PromptSet, fix_clicked_error, next_click
from core.cube import Cube, axis_directions, sample_into_cube
from core.cube_policy import CubePolicy
from core.errors import InputError
from core.geometry import mask_bbox
from core.io import spacing_of, voxel_to_world, world_to_voxel
from core.model import ModelConfig
from core.prompts import box_from_mask, interior_point
from core.samples import build_inputs, build_targets, first_pass_cube, prompt_center

__all__ = ["CubeSampling", "CubeDataset", "organ_extent_mm", "training_cube"]


@dataclass(frozen=True)
class CubeSampling:
    """How training cubes and prompts are drawn.

    Attributes
    ----------
    p_volume : probability of "volume" mode (else "slice")
    p_default_spacing : probability of a first-pass cube, placed exactly as the engine's
        first pass places it: centred on the prompt, at ``default_spacing_mm`` (never finer
        than the volume's voxels), knowing nothing of the organ
    default_spacing_mm : the first-pass spacing (defaults to the engine's
        ``CubePolicy.default_spacing_mm``)
    fill_range : otherwise a zoomed cube (as after the engine's zoom): organ extent / cube
        extent drawn uniformly in this range ...
    scale_noise : ... from an extent off by a log-normal factor of this sigma, because the
        engine zooms on a *predicted* extent: the cube's scale must not tell the model the
        organ's size (it would learn to fill the cube instead of reading the image)
    center_jitter : zoomed cube centre shift as a fraction of the cube extent
    prompt_kinds, prompt_probs : reference-slice prompt kinds and their probabilities
    point_jitter : interior-point jitter (``core.prompts.interior_point``)
    p_refine : probability of a simulated previous prediction + corrective clicks
    max_refine_clicks : corrective clicks at most
    p_self_refine : probability that a training step first runs 1 to ``max_self_rounds``
        refinement rounds on the model's own predictions (``core.self_refine``; applied in
        the training loop, on the whole batch)
    p_no_click_round : in those rounds, the probability that an item gets no corrective click
        (only its own prediction as the previous one: the engine's refinement pass)
    intensity_jitter : image * U(1 - j, 1 + j) + U(-j, j) / 2
    classes : restrict target classes (None: all present)
    """

    p_volume: float = 0.6
    p_default_spacing: float = 0.5
    default_spacing_mm: float = CubePolicy.default_spacing_mm
    fill_range: tuple[float, float] = (0.35, 0.85)
    scale_noise: float = 0.3
    center_jitter: float = 0.1
    prompt_kinds: tuple[str, ...] = ("point", "box", "mask", "mask+point")
    prompt_probs: tuple[float, ...] = (0.7, 0.1, 0.1, 0.1)
    point_jitter: float = 0.3
    p_refine: float = 0.4
    max_refine_clicks: int = 3
    p_self_refine: float = 0.0
    max_self_rounds: int = 2
    p_no_click_round: float = 0.0
    intensity_jitter: float = 0.05
    classes: tuple[int, ...] | None = None

    def __post_init__(self):
        probs = (
            self.p_volume,
            self.p_refine,
            self.p_default_spacing,
            self.p_self_refine,
            self.p_no_click_round,
        )
        if not all(0 <= p <= 1 for p in probs):
            raise ValueError("probabilities must be in [0, 1]")
        if self.max_self_rounds < 1:
            raise ValueError(f"max_self_rounds must be >= 1, got {self.max_self_rounds}")
        lo, hi = self.fill_range
        if not 0 < lo <= hi < 1:
            raise ValueError(f"fill_range must satisfy 0 < low <= high < 1, got {self.fill_range}")
        if self.scale_noise < 0 or self.default_spacing_mm <= 0:
            raise ValueError("scale_noise must be >= 0 and default_spacing_mm > 0")
        if (
            len(self.prompt_kinds) != len(self.prompt_probs)
            or abs(sum(self.prompt_probs) - 1) > 1e-6
        ):
            raise ValueError("prompt_probs must match prompt_kinds and sum to 1")


def organ_extent_mm(mask: np.ndarray, affine: np.ndarray, *, bbox=None) -> float:
    """Largest side of the organ's bounding box in world mm (along the volume axes);
    ``bbox``: :func:`mask_bbox` of ``mask`` when already known."""
    bbox = mask_bbox(mask) if bbox is None else bbox
    if bbox is None:
        return 0.0
    lo, hi = bbox
    return float(((hi - lo + 1) * np.array(spacing_of(affine))).max())


def training_cube(
    gt: np.ndarray, affine, prompts: PromptSet, s: CubeSampling, n: int, rng, *, bbox=None
) -> Cube:
    """Where a training example's cube goes: the engine's first pass (with probability
    ``s.p_default_spacing``: the prompt's centre at the default spacing, nothing taken from
    the ground truth), else a zoomed cube near the organ sized from a noisy extent.
    ``bbox``: :func:`mask_bbox` of ``gt`` when already known (``gt`` is then not read)."""
    if rng.random() < s.p_default_spacing:
        return first_pass_cube(prompts, affine, s.default_spacing_mm, n)
    bbox = mask_bbox(gt) if bbox is None else bbox
    vox_sp = spacing_of(affine)
    directions = axis_directions(affine)
    extent = organ_extent_mm(gt, affine, bbox=bbox) * float(np.exp(rng.normal(0.0, s.scale_noise)))
    spacing = extent / (n * rng.uniform(*s.fill_range))
    spacing = float(np.clip(spacing, 0.5 * min(vox_sp), 4.0 * max(vox_sp)))
    mid = (bbox[0] + bbox[1]) / 2.0
    t = rng.uniform(0, 1)
    center = (1 - t) * prompt_center(prompts, affine) + t * voxel_to_world(affine, mid)
    center = center + directions @ rng.uniform(-1, 1, 3) * s.center_jitter * n * spacing
    return Cube(center, spacing, directions, n)


class _CaseStore:
    """Loads cached case arrays on first use (memory-mapped), per worker process, and keeps
    what items would otherwise recompute over the whole volume: each class's bounding box and
    the image's minimum."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, dict] = {}
        self._bbox: dict[tuple[str, int], tuple[np.ndarray, np.ndarray] | None] = {}
        self._min: dict[str, float] = {}

    def bbox(self, case_id: str, k: int):
        """:func:`mask_bbox` of class ``k`` in the case's label map."""
        if (case_id, k) not in self._bbox:
            self._bbox[case_id, k] = mask_bbox(np.asarray(self.get(case_id)["label"]) == k)
        return self._bbox[case_id, k]

    def image_min(self, case_id: str) -> float:
        if case_id not in self._min:
            self._min[case_id] = float(np.min(self.get(case_id)["image"]))
        return self._min[case_id]

    def get(self, case_id: str) -> dict:
        if case_id not in self._cache:
            meta = json.loads((self.root / "cases" / case_id / "meta.json").read_text())
            self._cache[case_id] = {
                "meta": meta,
                "affine": np.array(meta["affine"], dtype=np.float64),
                "image": np.load(self.root / meta["image"], mmap_mode="r"),
                "label": np.load(self.root / meta["label"], mmap_mode="r"),
                "sdf": np.load(self.root / meta["sdf"], mmap_mode="r"),
            }
        return self._cache[case_id]


class CubeDataset(Dataset):
    """Model inputs + targets for training, one item per cached slice.

    Parameters
    ----------
    cache_dir : a preprocessed cache (``sam3d preprocess``), or a list of them
    model_cfg : the model's configuration (cube and view sizes, SDF truncation)
    sampling : how cubes and prompts are drawn
    case_ids : restrict to these cases (train/validation split); all done cases when None
    seed : base seed; items are reproducible for a given (seed, epoch, index)
    """

    def __init__(
        self,
        cache_dir,
        *,
        model_cfg: ModelConfig,
        sampling: CubeSampling | None = None,
        case_ids=None,
        seed: int = 0,
    ):
        roots = [cache_dir] if isinstance(cache_dir, (str, Path)) else list(cache_dir)
        self.roots = [Path(r) for r in roots]
        self.model_cfg = model_cfg
        self.sampling = sampling or CubeSampling()
        self.seed = int(seed)
        self.epoch = 0
        # (root index, case id) pairs; case ids must be unique across caches.
        found: dict[str, int] = {}
        for ri, root in enumerate(self.roots):
            if not (root / "manifest.json").is_file():
                raise InputError(root, "not a preprocessed cache (manifest.json missing)")
            for p in sorted((root / "cases").glob("*/meta.json")):
                if p.parent.name in found:
                    raise InputError(root, f"case {p.parent.name} is in two caches")
                found[p.parent.name] = ri
        if case_ids is not None:
            missing = sorted(set(case_ids) - set(found))
            if missing:
                raise InputError(self.roots[0], f"cases not in the cache: {', '.join(missing[:5])}")
            found = {c: r for c, r in found.items() if c in set(case_ids)}
        self.case_ids = sorted(found)
        self.case_root = {c: self.roots[r] for c, r in found.items()}
        self.items: list[tuple[str, str]] = []
        for cid in self.case_ids:
            meta = json.loads((self.case_root[cid] / "cases" / cid / "meta.json").read_text())
            self.items += [(cid, rel) for rel in meta["slices"]]
        if not self.items:
            raise InputError(self.roots[0], "no slices to train on (empty cache or case selection)")
        self.stores = {root: _CaseStore(root) for root in self.roots}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int | tuple[int, int]) -> dict:
        """Item ``i`` of the epoch set by :meth:`set_epoch`, or, for ``(epoch, i)``, item ``i``
        of that epoch (what ``core.train_data.EpochSampler`` asks for: data workers that live
        through the whole run keep the copy of the dataset they started with, so they never
        see ``set_epoch``)."""
        epoch, i = (int(i[0]), int(i[1])) if isinstance(i, tuple) else (self.epoch, int(i))
        rng = np.random.default_rng([self.seed, epoch, i])
        for attempt in range(len(self.items)):
            item = self._make(self.items[(i + attempt) % len(self.items)], rng)
            if item is not None:
                return item
        raise InputError(self.roots[0], "no slice holds a usable target class")

    # ----------------------------------------------------------------------------------------

    def _make(self, ref: tuple[str, str], rng: np.random.Generator) -> dict | None:
        case_id, rel = ref
        s = self.sampling
        root = self.case_root[case_id]
        with np.load(root / rel) as z:
            axis, idx = int(z["axis"]), int(z["slice_idx"])
            lab2 = z["label"]
        case = self.stores[root].get(case_id)
        present = [int(k) for k in np.unique(lab2) if k != 0]
        if s.classes is not None:
            present = [k for k in present if k in s.classes]
        if not present:
            return None
        k = int(rng.choice(present))
        m2 = lab2 == k
        affine = case["affine"]
        label = case["label"]  # memory-mapped: items read only their cube's block of it
        store = self.stores[root]

        kind = str(rng.choice(s.prompt_kinds, p=s.prompt_probs))
        r, c = interior_point(m2, rng=rng, jitter=s.point_jitter)
        clicks: list[Click] = []
        box = mask = None
        if kind in ("point", "mask+point"):
            clicks.append(Click(axis, idx, r, c, True))
        if kind == "box":
            r0, c0, r1, c1 = box_from_mask(m2, rng=rng, jitter_px=max(1, int(0.05 * max(m2.shape))))
            box = Box(axis, idx, r0, c0, r1, c1)
        if kind in ("mask", "mask+point"):
            mask = (axis, idx, m2)
        prompts = PromptSet(tuple(clicks), box, mask)

        cube = training_cube(
            None, affine, prompts, s, self.model_cfg.cube_size, rng, bbox=store.bbox(case_id, k)
        )
        mode = "volume" if rng.random() < s.p_volume else "slice"
        previous = None
        if rng.random() < s.p_refine:
            occ = sample_into_cube(label, affine, cube, order=0) == k
            previous = _perturb(occ, rng)
            prompts = self._corrective_clicks(
                prompts, previous, occ, cube, affine, label.shape, rng
            )

        j = s.intensity_jitter
        jitter = None
        if j > 0:
            jitter = (rng.uniform(1 - j, 1 + j), rng.uniform(-j, j) / 2)
        inputs = build_inputs(
            case["image"],
            affine,
            prompts,
            cube,
            self.model_cfg,
            mode=mode,
            previous=None if previous is None else previous.astype(np.float32),
            intensity=jitter,
            background=store.image_min(case_id),
        )
        targets = build_targets(
            label,
            case["sdf"][k - 1],
            affine,
            k,
            cube,
            inputs,
            self.model_cfg,
            axis=axis,
            slice_idx=idx,
        )
        out = {key: torch.from_numpy(np.asarray(v)) for key, v in {**inputs, **targets}.items()}
        out["class_id"] = k
        out["case_id"] = case_id
        out["mode_volume"] = mode == "volume"
        return out

    def _corrective_clicks(self, prompts, previous, occ, cube, affine, shape, rng):
        n_clicks = int(rng.integers(1, self.sampling.max_refine_clicks + 1))
        pred = previous.copy()
        for _ in range(n_clicks):
            click = next_click(pred, occ, spacing=(cube.spacing,) * 3, axis=AXIAL_AXIS)
            if click is None:
                break
            vol_vox = world_to_voxel(affine, voxel_to_world(cube.affine, click.voxel()))
            if np.any(vol_vox < 0) or np.any(vol_vox > np.array(shape) - 1):
                break
            ax = int(rng.integers(0, 3))
            prompts = prompts.add(Click.from_voxel(vol_vox, ax, click.positive))
            # A user's click fixes the error it lands in (the 26-connected miss or false
            # positive next_click chose it from); reflect that so the next one moves on.
            pred = fix_clicked_error(pred, occ, click.voxel(), click.positive)
        return prompts


def _perturb(occ: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible imperfect previous prediction, binary as the engine passes it: one or two
    of eroded, dilated, shifted, partly cut, or smoothed into a blob (what an undertrained
    model's first guess looks like), sometimes with a spurious blob elsewhere."""
    pred = occ.copy()
    for _ in range(int(rng.integers(1, 3))):
        pred = _perturb_once(pred, rng)
    if rng.random() < 0.3:  # a spurious blob elsewhere
        lo = min(8, pred.shape[0] // 4)
        c = rng.integers(lo, pred.shape[0] - lo, 3)
        rad = int(rng.integers(2, 5))
        sl = tuple(slice(int(x) - rad, int(x) + rad) for x in c)
        pred[sl] = True
    return pred


def _perturb_once(pred: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(0, 5)
    if kind == 0:
        pred = ndimage.binary_erosion(pred, iterations=int(rng.integers(1, 5)))
    elif kind == 1:
        pred = ndimage.binary_dilation(pred, iterations=int(rng.integers(1, 5)))
    elif kind == 2:
        pred = np.roll(pred, tuple(rng.integers(-4, 5, 3)), axis=(0, 1, 2))
    elif kind == 3:
        ax = int(rng.integers(0, 3))
        idx = np.argwhere(pred)
        if len(idx):
            cut = rng.uniform(idx[:, ax].min(), idx[:, ax].max())
            grid = np.arange(pred.shape[ax]).reshape([-1 if a == ax else 1 for a in range(3)])
            pred = pred & ((grid < cut) if rng.random() < 0.5 else (grid > cut))
    else:
        smooth = ndimage.gaussian_filter(pred.astype(np.float32), float(rng.uniform(1.0, 4.0)))
        pred = smooth > rng.uniform(0.25, 0.6)
    return pred
