"""The engine every front end uses: prompts on a volume -> the organ's 3D mask and mesh.

    rec = Reconstructor.from_pretrained()                 # shipped base weights, loaded once
    res = rec.predict(volume, PromptSet((Click(2, 40, 31, 28),)), mode="volume")
    res.mask, res.mesh, res.slice_mask, res.timings

Cube policy (where the model looks: zoom out so that an organ is never cut off silently,
optional zoom-in): ``core.cube_policy``.

Refinement pass (volume mode, first prediction; ``CubePolicy(refine_passes=1)``): the model
runs once more in the final cube with its own binary mask as the previous prediction and the
same prompts, as it would for a corrective click. The model was trained on such rounds
(``core.self_refine``). On the validation cases, first click (one pass -> with the refinement
pass): 12 held-out openkbp_train cases with the head-and-neck adapter, volume Dice@1 0.540 ->
0.557 (and 0.702 -> 0.708 after 5 clicks); the 16 held-out synthetic hearts, 0.863 -> 0.870.
A second refinement pass lost again (0.557 -> 0.553), in slice mode it hurt the head and neck
(0.490 -> 0.478), and adding it after every corrective click did worse than after the first
only (5 clicks: 0.700 vs 0.708): so one pass, volume mode, first prediction only. It costs one
forward pass (about 25-40 ms on 2 CPU cores).

Refinement: passing the previous :class:`Result` keeps its cube (unless a new click falls
outside it) and feeds its probabilities back to the model with all clicks so far.

The mask keeps the connected components that hold a positive click, and otherwise the largest
one. It comes back on the input volume's own grid and affine; the mesh is the marching-cubes
surface of the cube's probabilities at 0.5 in world mm (smoother than the voxel mask).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from core.clicks import Click, PromptSet, check_prompts_in_volume
from core.cube import Cube, sample_into_cube
from core.cube_policy import (
    CubePolicy,
    cube_around,
    extent_vox,
    inside_cube,
    recentered,
    touches_inside_volume,
)
from core.errors import InputError
from core.geometry import take_slice
from core.intensity import (
    DEFAULT_CT_WINDOW,
    WindowedCT,
    intensity_warning,
    normalize_intensity,
)
from core.io import Volume, voxel_volume_mm3
from core.model import CUBE_CHANNELS, Sam3DMed
from core.orient import CanonicalFrame
from core.paste import mask_on_volume, slice_mask_back
from core.samples import MODES, build_inputs, first_pass_cube

__all__ = ["CubePolicy", "Result", "Reconstructor", "mask_on_volume"]


@dataclass(frozen=True, eq=False)
class Result:
    """One reconstruction.

    Attributes
    ----------
    mask : (I, J, K) bool on the input volume's grid
    affine : (4, 4) the input volume's affine
    mesh : core.mesh.Mesh in world mm, or None (empty mask or ``mesh=False``)
    slice_mask : (H, W) bool, the 2D head's mask on the reference slice (input slice grid)
    reference_slice : (axis, slice_idx)
    cube : the cube of the final pass
    cube_probability : (C, C, C) float32, the final pass's probabilities (for refinement)
    prompts : the prompts used
    mode : "volume" or "slice"
    touches_border : the organ still touches the cube where the volume continues
    passes : model runs (zoom steps and the refinement pass included)
    timings : milliseconds per stage and ``total``; ``model`` (all model passes) splits into
        ``inputs`` (resampling the cube, the views and pointmaps) and ``forward`` (the network)
    warnings : one-line notes the user should see (e.g. values that do not look like the
        chosen modality: :func:`core.intensity.intensity_warning`)
    """

    mask: np.ndarray
    affine: np.ndarray
    mesh: object
    slice_mask: np.ndarray
    reference_slice: tuple[int, int]
    cube: Cube
    cube_probability: np.ndarray
    prompts: PromptSet
    mode: str
    touches_border: bool
    passes: int
    timings: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def volume_ml(self) -> float:
        # count_nonzero: the same count as sum(), without a pass of additions
        return float(np.count_nonzero(self.mask) * voxel_volume_mm3(self.affine) / 1000.0)


class Reconstructor:
    """Holds one model (and its adapters) and answers prompts on volumes.

    Build it with :meth:`from_pretrained`; the weights are loaded once, nothing happens at
    import time. Each adapter is merged into its own copy of the base when first used (the
    base is a few MB), so a prediction with an adapter costs what one with the bare base does
    (peft's unmerged LoRA layers cost about 10 ms per pass on 2 CPU cores), and switching
    between adapters and the base is instant.
    """

    def __init__(
        self,
        model: Sam3DMed,
        *,
        device: str = "cpu",
        policy: CubePolicy | None = None,
        name: str = "base",
        precision: str = "auto",
    ):
        if hasattr(model, "peft_config"):  # a peft model forwards .cfg; its base is not ours
            raise TypeError(
                "Reconstructor takes the base model, not a peft model: load adapters with "
                "set_adapter(folder) or Reconstructor.from_pretrained(adapter=...)"
            )
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        # "auto": bf16 where it is the faster (CUDA; CPUs with AMX; CPUs with AVX512-BF16
        # alone where core.precision measures it faster: about a second, once per machine),
        # else fp32.
        if precision == "auto":
            precision = "bf16" if _native_bf16(self.device) else "fp32"
        self.precision = precision
        self.cfg = model.cfg
        self.policy = policy or CubePolicy()
        self.base_model = self.model
        # (folder, its weights' write time) -> the base with that adapter merged in
        self.merged: dict[tuple[Path, int], torch.nn.Module] = {}
        self.name = name
        # the modality the adapter in use was trained on (None: the base, or not recorded),
        # and the CT window of its training data (None: the default, DEFAULT_CT_WINDOW)
        self.trained_modality: str | None = None
        self.trained_ct_window: tuple[float, float] | None = None
        self._trained_on: dict[tuple[Path, int], tuple] = {}
        self._norm_cache: tuple | None = None
        self._canonical_cache: tuple | None = None  # (array, affine, its RAS+ Volume)
        self._cond_cache: tuple | None = None  # (model, version, view inputs, condition)
        self.warm = False  # a prediction has run (warm_up or a first click)

    @classmethod
    def from_pretrained(
        cls,
        weights=None,
        adapter=None,
        *,
        device: str = "cpu",
        policy: CubePolicy | None = None,
        precision: str = "auto",
    ) -> Reconstructor:
        """Load base weights (None: the shipped base) and optionally an adapter (a shipped
        name such as ``"headneck-ct"`` or a folder)."""
        from core.weights import load_model

        model = load_model(weights, device=device)
        rec = cls(model, device=device, policy=policy, precision=precision)
        if adapter is not None:
            rec.set_adapter(adapter)
        return rec

    # ----------------------------------------------------------------------------------------
    # adapters

    def set_adapter(self, adapter) -> None:
        """Use an adapter (shipped name or folder), or the bare base with None. The base
        stays loaded; switching never reloads it.

        Each folder is merged once (checked against the base as ``core.lora`` loads it) under
        a key made of its full path and the time its weights were written: two runs'
        ``adapter_best`` folders never shadow each other, and an adapter retrained in place
        (a resumed run) is merged again, replacing its stale copy."""
        from core.adapter_files import read_adapter_info, trained_ct_window, trained_modality
        from core.lora import ADAPTER_WEIGHTS
        from core.weights import resolve_adapter

        if adapter is None:
            self.model, self.name = self.base_model, "base"
            self.trained_modality = self.trained_ct_window = None
            return
        folder = Path(resolve_adapter(adapter)).resolve()
        weights = folder / ADAPTER_WEIGHTS
        stamp = weights.stat().st_mtime_ns if weights.exists() else 0
        key = (folder, stamp)
        if key not in self.merged:
            merged = self._merge(folder)
            for k in [k for k in self.merged if k[0] == folder]:
                del self.merged[k]  # the same folder's older weights
                self._trained_on.pop(k, None)
            self.merged[key] = merged
            info = read_adapter_info(folder)
            self._trained_on[key] = (trained_modality(info), trained_ct_window(info))
        self.model, self.name = self.merged[key], folder.name
        self.trained_modality, self.trained_ct_window = self._trained_on[key]

    def ct_window_for(self, ct_window=None) -> tuple[float, float]:
        """The CT window a prediction uses: ``ct_window`` when given, else the one the adapter
        in use was trained with, else the default (the base's)."""
        return _ct_window(ct_window, self.trained_ct_window)

    def _merge(self, folder: Path) -> torch.nn.Module:
        """The base with the adapter in ``folder`` folded into a copy of its weights; the
        base itself is handed back unchanged (``AdapterManager.unload`` checks its hash)."""
        from core.adapters import AdapterManager

        manager = AdapterManager(self.base_model)
        try:
            manager.activate(manager.load(folder, name="adapter"))
            return manager.merge().eval()
        finally:
            manager.unload()
            self.base_model.eval()

    # ----------------------------------------------------------------------------------------

    def warm_up(self) -> dict | None:
        """Run one click on a small built-in volume, once, so that the first real click runs
        at full speed: a fresh process's first forward builds oneDNN's kernels for the cube's
        and views' shapes (the same for every volume), and the mesh code loads. Front ends
        call it in the background right after loading (the web app before serving, napari
        when the Reconstruct widget opens). Returns the warm-up click's timings, or None when a
        prediction has already run (nothing to do). Results are unchanged by it."""
        if self.warm:
            return None
        n, spacing = self.cfg.cube_size, self.policy.default_spacing_mm
        grid = (np.indices((n, n, n), dtype=np.float32) - (n - 1) / 2.0) * spacing
        blob = ((grid / np.array([30.0, 24.0, 20.0])[:, None, None, None]) ** 2).sum(0) <= 1
        affine = np.diag([spacing, spacing, spacing, 1.0])
        volume = Volume(np.where(blob, 60.0, -80.0).astype(np.float32), affine, "warm-up")
        centre = n // 2
        res = self.predict(volume, PromptSet((Click(2, centre, centre, centre),)), mode="volume")
        self._norm_cache = self._cond_cache = None  # hold nothing of the built-in volume
        return res.timings

    def _canonical(self, volume: Volume, frame: CanonicalFrame) -> Volume:
        """``volume`` on its RAS+ grid, kept for the next click on the same array."""
        c = self._canonical_cache
        if c is None or c[0] is not volume.data or not np.array_equal(c[1], volume.affine):
            data = frame.array(volume.data)
            canon = Volume(data, frame.affine(volume.affine), volume.path)
            self._canonical_cache = (volume.data, np.array(volume.affine), canon)
        return self._canonical_cache[2]

    def _normalized(self, volume: Volume, modality: str, ct_window) -> tuple[np.ndarray, tuple]:
        """The normalised array and the warnings on its values."""
        # Keyed on the array object itself (kept alive by the cache, so its id cannot be
        # reused by another volume), not on id() alone.
        key = (modality, tuple(ct_window))
        c = self._norm_cache
        if c is None or c[0] is not volume.data or c[1] != key:
            # min and max propagate NaN and hold any Inf: two passes, no volume-sized mask
            lo, hi = volume.data.min(), volume.data.max()
            if not (np.isfinite(lo) and np.isfinite(hi)):  # a NaN cube: an empty mask
                bad = int(np.count_nonzero(~np.isfinite(volume.data)))
                raise InputError(volume.path, f"contains {bad} NaN/Inf voxels")
            if modality == "ct":  # voxel by voxel: normalised where the model reads
                norm = WindowedCT(volume.data, ct_window, minimum=lo)
            else:  # percentiles of the whole volume
                norm = normalize_intensity(volume.data, modality, ct_window=ct_window)
            note = intensity_warning(
                volume.data, modality, ct_window=ct_window, value_range=(lo, hi)
            )
            self._norm_cache = (volume.data, key, norm, (note,) if note else ())
        return self._norm_cache[2], self._norm_cache[3]

    @torch.inference_mode()
    def _run(
        self,
        model,
        image,
        affine,
        prompts,
        cube,
        mode,
        previous,
        timings,
        *,
        like: dict | None = None,
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """One pass of ``model``; adds its input building and its forward to ``timings``.

        ``like``: the inputs of an earlier pass of this call with the same prompts, mode and
        cube (the refinement pass): only the previous-prediction channel is rebuilt. The
        slice's condition (:meth:`_condition`) is reused whenever its inputs are unchanged.
        Same result, less work."""
        t = time.perf_counter()
        if like is None:
            inp = build_inputs(image, affine, prompts, cube, self.cfg, mode=mode, previous=previous)
        else:
            inp = dict(like)
            inp["cube"] = like["cube"].copy()
            inp["cube"][_PREVIOUS] = 0.0 if previous is None else previous
        batch = {
            k: torch.from_numpy(np.asarray(inp[k]))[None].to(self.device)
            for k in ("cube", "crop_view", "crop_pointmap", "full_view", "full_pointmap", "center")
        }
        timings["inputs"] = round(timings.get("inputs", 0.0) + _ms(t), 2)
        t = time.perf_counter()
        split = callable(getattr(model, "condition", None))
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        ):
            if split:
                out = model(batch, condition=self._condition(model, batch, inp))
            else:
                out = model(batch)
        prob = torch.sigmoid(out["occupancy"][0, 0].float()).cpu().numpy()
        slice_prob = torch.sigmoid(out["slice_mask"][0, 0].float()).cpu().numpy()
        timings["forward"] = round(timings.get("forward", 0.0) + _ms(t), 2)
        return prob, slice_prob, inp

    def _condition(self, model, batch: dict, inp: dict) -> dict:
        """``model.condition(batch)`` (``Sam3DMed.condition``: the slice's tokens and 2D mask,
        which do not read the cube), or the last one computed when nothing it depends on has
        changed: the same model object with no weight changed in place since (the
        parameters' version counters), the same precision, and equal views, pointmaps and
        centre. That holds for the first click's refinement pass and for a corrective click
        on another slice than the reference slice, in the same cube."""
        version = (sum(p._version for p in model.parameters()), self.precision)
        c = self._cond_cache
        if (
            c is not None
            and c[0] is model
            and c[1] == version
            and all(np.array_equal(c[2][k], inp[k], equal_nan=True) for k in _CONDITION_INPUTS)
        ):
            return c[3]
        cond = model.condition(batch)
        views = {k: np.array(inp[k], copy=True) for k in _CONDITION_INPUTS}
        self._cond_cache = (model, version, views, cond)
        return cond

    def predict(
        self,
        volume: Volume,
        prompts: PromptSet,
        *,
        mode: str = "volume",
        modality: str = "ct",
        ct_window=None,
        previous: Result | None = None,
        mesh: bool = True,
        policy: CubePolicy | None = None,
    ) -> Result:
        """Reconstruct the structure the prompts point at.

        Parameters
        ----------
        volume : the input volume in raw intensities (HU for CT), in any axis order: the
            model sees it on its RAS+ grid (``core.orient``); prompts and results are on the
            volume's own grid. The normalised and reoriented copies are kept for the next
            click on the same array object: after changing its voxels in place, pass a new
            array (``Volume(data.copy(), affine)``), or the next click may see the old
            voxels (or their old range)
        prompts : positive/negative clicks on any slice and axis, a box, a mask
        mode : "volume" (the model sees the 3D volume) or "slice" (only the reference slice)
        modality : "ct", "mr" or "us" (intensity normalisation, as in preprocessing)
        ct_window : (low, high) HU for CT; None: the window the adapter in use was trained
            with (``sam3d preprocess --ct_window``, recorded in its metadata), else
            :data:`core.intensity.DEFAULT_CT_WINDOW` (the base's)
        previous : the last result for the same structure: refine it with the new clicks
        mesh : also extract the surface mesh
        policy : the cube policy for this call (None: the one given at construction), so
            front ends that share one model need not change its state

        Raises
        ------
        InputError
            A click, box or mask outside the volume, a mask of another shape than its
            slice, NaN or Inf voxels (names the volume's file).
        ValueError
            Prompts without a positive click, box or mask; unknown mode; ``previous`` from
            another grid (shape or affine) than ``volume``'s.
        TypeError
            ``volume`` is not a :class:`core.io.Volume` or ``prompts`` not a ``PromptSet``.
        """
        if not isinstance(volume, Volume):
            raise TypeError(
                f"volume must be a core.io.Volume (Volume(array, affine)), got "
                f"{type(volume).__name__}"
            )
        if not isinstance(prompts, PromptSet):
            raise TypeError(
                f"prompts must be a core.clicks.PromptSet (PromptSet((click, ...))), got "
                f"{type(prompts).__name__}"
            )
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        prompts.validate()
        check_prompts_in_volume(prompts, volume.shape, path=volume.path)
        if previous is not None:
            _check_previous(previous, volume)
        if prompts.box is not None:  # a box drawn past the slice's edges: the part on it
            b = prompts.box
            h, w = (n for a, n in enumerate(volume.shape) if a != b.axis)
            on = (max(b.r0, 0), max(b.c0, 0), min(b.r1, h), min(b.c1, w))
            if on != b.rc:
                prompts = replace(prompts, box=replace(b, r0=on[0], c0=on[1], r1=on[2], c1=on[3]))
        frame = CanonicalFrame.of(volume.affine, volume.shape)
        if frame is None:
            self._canonical_cache = None  # a RAS+ volume now: no copy of another kept
            return self._predict(volume, prompts, mode, modality, ct_window, previous, mesh, policy)
        # stored in another axis order or with flips: the model sees it as RAS+
        t0 = time.perf_counter()
        res = self._predict(
            self._canonical(volume, frame),
            frame.prompts(prompts),
            mode,
            modality,
            ct_window,
            None if previous is None else frame.previous(previous),
            mesh,
            policy,
        )
        res = frame.result_back(res, volume=volume, prompts=prompts)
        res.timings["total"] = _ms(t0)
        return res

    def _predict(
        self, volume: Volume, prompts, mode, modality, ct_window, previous, mesh, policy
    ) -> Result:
        """:meth:`predict` on a RAS+ volume with checked prompts."""
        t0 = time.perf_counter()
        model = self.model  # read once: every pass of this call runs the same weights
        trained, trained_window = self.trained_modality, self.trained_ct_window
        timings: dict[str, float] = {}
        window = _ct_window(ct_window, trained_window)
        image, warnings = self._normalized(volume, modality, window)
        if trained is not None and trained != modality:
            warnings += (
                f"the adapter {self.name} was trained on {trained.upper()} intensities but "
                f"this run normalises them as {modality.upper()}: choose the "
                f"{trained.upper()} modality",
            )
        elif modality == "ct" and trained_window and window != trained_window:
            warnings += (
                f"the adapter {self.name} was trained on CT in the window "
                f"[{trained_window[0]:g}, {trained_window[1]:g}] HU but this run uses "
                f"[{window[0]:g}, {window[1]:g}]: leave the window unset to use its own",
            )
        affine = volume.affine
        timings["normalize"] = _ms(t0)
        pol = policy or self.policy

        if previous is not None:
            cube = previous.cube
            prev_prob = (previous.cube_probability > 0.5).astype(np.float32)
            if not all(inside_cube(cube, affine, c.voxel()) for c in prompts.clicks):
                cube = cube_around(
                    previous.mask, prompts, affine, cube.spacing, pol, self.cfg.cube_size
                )
                prev_prob = sample_into_cube(
                    _as_uint8(previous.mask), affine, cube, order=0
                ).astype(np.float32)
        else:
            cube = first_pass_cube(prompts, affine, pol.default_spacing_mm, self.cfg.cube_size)
            prev_prob = None

        t = time.perf_counter()
        prob, slice_prob, inp = self._run(
            model, image, affine, prompts, cube, mode, prev_prob, timings
        )
        passes = 1
        if previous is None:
            for _ in range(pol.max_zoom_out):
                if not touches_inside_volume(prob > 0.5, cube, affine, volume.shape):
                    break
                cube = recentered(cube, prob > 0.5).with_spacing(cube.spacing * pol.zoom_out_factor)
                prob, slice_prob, inp = self._run(
                    model, image, affine, prompts, cube, mode, None, timings
                )
                passes += 1
            else:
                pass
            fg = prob > 0.5
            if pol.zooms_in(mode) and passes == 1 and fg.any():
                extent = extent_vox(fg) * cube.spacing
                fill = extent / cube.extent_mm
                if fill < pol.min_fill:
                    spacing = max(extent / (pol.target_fill * cube.size), pol.min_spacing_mm)
                    if spacing < cube.spacing * 0.8:
                        cube = recentered(cube, fg).with_spacing(spacing)
                        prob, slice_prob, inp = self._run(
                            model, image, affine, prompts, cube, mode, None, timings
                        )
                        passes += 1
            if mode == "volume":
                for _ in range(pol.refine_passes):  # its own mask back, in the final cube
                    own = (prob > 0.5).astype(np.float32)
                    if not own.any():  # an empty previous is no previous: same output
                        break
                    prob, slice_prob, inp = self._run(
                        model, image, affine, prompts, cube, mode, own, timings, like=inp
                    )
                    passes += 1
        timings["model"] = _ms(t)

        t = time.perf_counter()
        fg = prob > 0.5
        touches = touches_inside_volume(fg, cube, affine, volume.shape)
        mask = mask_on_volume(prob, cube, affine, volume.shape, prompts)
        axis, idx = prompts.reference_slice()
        sl_shape = take_slice(mask, axis, idx).shape
        slice_mask = slice_mask_back(slice_prob, inp["crop_matrix"], sl_shape)
        timings["paste"] = _ms(t)

        surface = None
        if mesh and mask.any():
            t = time.perf_counter()
            from core.mesh import mask_to_mesh

            keep = sample_into_cube(_as_uint8(mask), affine, cube, order=0).astype(bool)
            field_ = np.where(ndimage.binary_dilation(keep, iterations=2), prob, 0.0)
            if field_.max() > 0.5:
                surface = mask_to_mesh(field_, cube.affine, level=0.5)
            timings["mesh"] = _ms(t)
        timings["total"] = _ms(t0)
        self.warm = True
        return Result(
            mask,
            np.asarray(affine),
            surface,
            slice_mask,
            (axis, idx),
            cube,
            prob.astype(np.float32),
            prompts,
            mode,
            touches,
            passes,
            timings,
            warnings,
        )


_PREVIOUS = CUBE_CHANNELS.index("previous")
# What Sam3DMed.condition reads.
_CONDITION_INPUTS = ("crop_view", "crop_pointmap", "full_view", "full_pointmap", "center")


def _ct_window(chosen, trained) -> tuple[float, float]:
    """``chosen`` when given, else the adapter's training window ``trained``, else the
    default."""
    w = chosen if chosen is not None else trained or DEFAULT_CT_WINDOW
    return float(w[0]), float(w[1])


def _native_bf16(device: torch.device) -> bool:
    """Whether bf16 is the faster precision on ``device`` (CUDA: where supported; CPU:
    :func:`core.precision.fast_cpu_bf16`)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    from core.precision import fast_cpu_bf16

    return fast_cpu_bf16()


def _as_uint8(mask) -> np.ndarray:
    """A bool mask as uint8 0/1 without a copy: a view, of which sampling into the cube reads
    only the cube's block (``astype`` copied all 157 M voxels of a 512 x 512 x 600 mask)."""
    return np.asarray(mask, dtype=bool).view(np.uint8)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 2)


def _check_previous(previous: Result, volume: Volume) -> None:
    """Raise ValueError unless ``previous`` is a result on ``volume``'s own grid."""
    shape = tuple(np.shape(previous.mask))
    if shape != volume.shape:
        raise ValueError(
            f"previous is a result on a grid of shape {shape}, not this volume's "
            f"{volume.shape}: pass the last result for the same volume"
        )
    diff = float(np.max(np.abs(np.asarray(previous.affine) - np.asarray(volume.affine))))
    if diff > 1e-3:
        raise ValueError(
            f"previous is a result on another grid (its affine differs from this volume's by "
            f"up to {diff:.4g}): pass the last result for the same volume"
        )
