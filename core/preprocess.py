"""Preprocessing of a labelled dataset into the training/evaluation cache.

Each case is loaded and validated, resampled to isotropic spacing in canonical orientation,
normalised per modality, turned into per-class signed distance fields (and optionally meshes),
and cut into per-slice ``.npz`` samples. ``docs/cache-format.md`` describes the output.

The run is resumable: a case is done once its ``meta.json`` exists (written last, atomically),
and a rerun with the same parameters skips done cases. A rerun with other parameters is refused
(or, with ``overwrite=True``, the old cache is removed first). A bad case is skipped and
reported; it never stops the batch and never touches other cases' files.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import shutil
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from core.atomic import make_output_dir, save_npy, save_npz, write_json
from core.datasets import LAYOUTS, Case, declared_modality, discover, resolve_modality
from core.errors import InputError
from core.geometry import slice_pointmap, take_slice
from core.intensity import DEFAULT_CT_WINDOW, MODALITIES, intensity_rule, normalize_intensity
from core.io import fingerprint, load_pair
from core.resample import resample_pair
from core.sdf import class_sdfs

__all__ = [
    "SLICE_SAMPLINGS",
    "FORMAT_VERSION",
    "PreprocessConfig",
    "CaseResult",
    "PreprocessSummary",
    "preprocess_dataset",
    "preprocess_case",
    "select_slices",
]

FORMAT_VERSION = 1
SLICE_SAMPLINGS = ("random_axis", "uniform", "central", "all")
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of a preprocessing run (all but ``workers``/``layout`` shape the output).

    Attributes
    ----------
    input_dir : dataset folder (any layout)
    out_dir : cache folder
    classes : K, the number of foreground classes (labels 1..K; a larger label is an error)
    spacing : isotropic voxel size, mm
    axes : slice axes to sample
    slice_sampling : one of :data:`SLICE_SAMPLINGS`
    slices_per_axis : slices per axis for ``uniform`` and ``random_axis``
    modality : "ct", "mr" or "us"; None: the one the dataset's ``dataset.json`` declares,
        else CT (``core.datasets.resolve_modality``; the cache records the one used)
    ct_window : HU window for CT
    extract_mesh : also write per-class ``.ply`` meshes in world mm
    workers : parallel processes
    layout : force a dataset layout (auto-detected when None)
    """

    input_dir: str
    out_dir: str
    classes: int
    spacing: float = 3.0
    axes: tuple[int, ...] = (0, 1, 2)
    slice_sampling: str = "uniform"
    slices_per_axis: int = 8
    modality: str | None = None
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW
    extract_mesh: bool = False
    workers: int = 1
    layout: str | None = None

    def __post_init__(self):
        if int(self.classes) < 1:
            raise ValueError(f"classes must be at least 1, got {self.classes}")
        if not float(self.spacing) > 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        axes = tuple(int(a) for a in self.axes)
        if not axes or any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"axes must be distinct values among 0, 1, 2, got {self.axes}")
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "ct_window", tuple(float(x) for x in self.ct_window))
        if self.slice_sampling not in SLICE_SAMPLINGS:
            raise ValueError(
                f"slice_sampling must be one of {', '.join(SLICE_SAMPLINGS)}, "
                f"got {self.slice_sampling!r}"
            )
        if int(self.slices_per_axis) < 1:
            raise ValueError(f"slices_per_axis must be at least 1, got {self.slices_per_axis}")
        if self.modality is not None and self.modality not in MODALITIES:
            raise ValueError(
                f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}"
            )
        if not self.ct_window[1] > self.ct_window[0]:
            raise ValueError(f"ct_window must be (low, high) with high > low, got {self.ct_window}")
        if int(self.workers) < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")

    def resolved(self, declared: str | None = None) -> tuple[PreprocessConfig, str | None]:
        """This config with its modality settled (given, else ``declared``, else CT) and the
        note when a given modality overrides a different declared one."""
        modality, note = resolve_modality(self.modality, declared, source=str(self.input_dir))
        return replace(self, modality=modality), note

    def output_params(self) -> dict:
        """The parameters that determine the cache's content (compared on resume); the
        modality must have been resolved (:meth:`resolved`)."""
        if self.modality is None:
            raise ValueError("output_params needs a resolved modality (PreprocessConfig.resolved)")
        d = asdict(self)
        for k in ("input_dir", "out_dir", "workers", "layout"):
            d.pop(k)
        d["axes"] = list(self.axes)
        d["ct_window"] = list(self.ct_window)
        d["format_version"] = FORMAT_VERSION
        # how intensities were normalised: a cache made under another rule is redone
        d["intensity"] = intensity_rule(self.modality, self.ct_window)
        return d


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    status: str  # "done", "skipped" (already done) or "failed"
    message: str = ""
    n_slices: int = 0
    seconds: float = 0.0


@dataclass
class PreprocessSummary:
    out_dir: str
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0

    @property
    def n_done(self) -> int:
        return len(self.processed) + len(self.skipped)

    def exit_code(self) -> int:
        """0 when at least one case is in the cache, 1 when none could be processed,
        130 when cancelled."""
        if self.cancelled:
            return 130
        return 0 if self.n_done > 0 else 1

    def to_dict(self) -> dict:
        return {
            "out_dir": self.out_dir,
            "processed": self.processed,
            "skipped_already_done": self.skipped,
            "failed": self.failed,
            "dataset_problems": self.problems,
            "cancelled": self.cancelled,
            "seconds": round(self.seconds, 3),
        }

    def report(self) -> str:
        lines = [
            f"preprocess: {len(self.processed)} processed, {len(self.skipped)} already done, "
            f"{len(self.failed)} failed ({self.seconds:.1f} s) -> {self.out_dir}"
        ]
        lines += [f"  failed: {cid}: {msg}" for cid, msg in sorted(self.failed.items())]
        lines += [f"  dataset: {p}" for p in self.problems]
        if self.cancelled:
            lines.append("  cancelled: finished cases are kept; rerun to resume")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Slice selection


def _seed_for(case_id: str) -> int:
    return zlib.crc32(case_id.encode())


def select_slices(
    label: np.ndarray, axes, sampling: str, *, per_axis: int = 8, seed: int = 0
) -> list[tuple[int, int]]:
    """Choose ``(axis, slice_idx)`` pairs among slices that hold foreground.

    See ``docs/cache-format.md`` for the sampling methods. Deterministic for a seed.
    """
    fg = label > 0
    candidates = {}
    for ax in axes:
        other = tuple(a for a in (0, 1, 2) if a != ax)
        candidates[ax] = np.flatnonzero(fg.any(axis=other))
    out: list[tuple[int, int]] = []
    if sampling == "all":
        out = [(ax, int(i)) for ax in axes for i in candidates[ax]]
    elif sampling == "uniform":
        for ax in axes:
            c = candidates[ax]
            if len(c) == 0:
                continue
            pick = np.unique(np.round(np.linspace(0, len(c) - 1, min(per_axis, len(c)))))
            out += [(ax, int(c[int(k)])) for k in pick]
    elif sampling == "central":
        coords = np.argwhere(fg)
        centroid = coords.mean(axis=0)
        for ax in axes:
            c = candidates[ax]
            if len(c):
                out.append((ax, int(c[np.argmin(np.abs(c - centroid[ax]))])))
    elif sampling == "random_axis":
        rng = np.random.default_rng(seed)
        n = per_axis * len(axes)
        chosen: set[tuple[int, int]] = set()
        usable = [ax for ax in axes if len(candidates[ax])]
        total = sum(len(candidates[ax]) for ax in usable)
        while usable and len(chosen) < min(n, total):
            ax = int(rng.choice(usable))
            chosen.add((ax, int(rng.choice(candidates[ax]))))
        out = sorted(chosen)
    else:
        raise ValueError(f"unknown slice sampling {sampling!r}")
    return out


# --------------------------------------------------------------------------------------------
# One case


def _case_paths(out_dir: Path, case_id: str) -> tuple[Path, Path]:
    return out_dir / "cases" / case_id, out_dir / "slices" / case_id


def _params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def case_is_done(out_dir: Path, case_id: str, params_hash: str) -> bool:
    meta = _case_paths(out_dir, case_id)[0] / "meta.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("params_hash") == params_hash
    except (OSError, ValueError):
        return False


def preprocess_case(case: Case, cfg: PreprocessConfig) -> CaseResult:
    """Process one case into the cache; never raises for bad data (returns ``failed``).
    A config without a modality takes the one the case's dataset declares (else CT)."""
    t0 = time.perf_counter()
    if cfg.modality is None:
        cfg = cfg.resolved(declared_modality(case.image))[0]
    out_dir = Path(cfg.out_dir)
    case_dir, slice_dir = _case_paths(out_dir, case.case_id)
    try:
        _preprocess_case(case, cfg, case_dir, slice_dir)
    except InputError as exc:
        _remove_unfinished(case_dir, slice_dir)
        return CaseResult(case.case_id, "failed", str(exc))
    except Exception as exc:  # a bug or an unexpected file problem: report, keep the batch going
        _remove_unfinished(case_dir, slice_dir)
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return CaseResult(case.case_id, "failed", f"{case.image}: unexpected error: {tb}")
    n = len(json.loads((case_dir / "meta.json").read_text())["slices"])
    return CaseResult(case.case_id, "done", "", n, time.perf_counter() - t0)


def _remove_unfinished(case_dir: Path, slice_dir: Path) -> None:
    if not (case_dir / "meta.json").exists():
        shutil.rmtree(case_dir, ignore_errors=True)
        shutil.rmtree(slice_dir, ignore_errors=True)


def _preprocess_case(case: Case, cfg: PreprocessConfig, case_dir: Path, slice_dir: Path):
    if case.label is None:
        raise InputError(case.image, "no label file for this image")
    image, label = load_pair(case.image, case.label, max_label=cfg.classes)
    source_fingerprint = fingerprint(image)  # the scan as loaded, before resampling
    image, label = resample_pair(image, label, cfg.spacing)
    if not label.data.any():
        raise InputError(case.label, "label map is empty after resampling (organs too small?)")
    spacing = image.spacing
    data = normalize_intensity(image.data, cfg.modality, ct_window=cfg.ct_window)
    lab = label.data.astype(np.uint8) if cfg.classes < 256 else label.data
    sdf = class_sdfs(lab, cfg.classes, spacing)

    # A rerun after a kill may find stale files (even temporaries) of the interrupted attempt.
    shutil.rmtree(case_dir, ignore_errors=True)
    shutil.rmtree(slice_dir, ignore_errors=True)
    case_dir.mkdir(parents=True, exist_ok=True)
    slice_dir.mkdir(parents=True, exist_ok=True)
    save_npy(case_dir / "image.npy", data)
    save_npy(case_dir / "label.npy", lab)
    save_npy(case_dir / "sdf.npy", sdf)
    sdf_rel = f"cases/{case.case_id}/sdf.npy"

    meshes = {}
    if cfg.extract_mesh:
        from core.mesh import mask_to_mesh, save_mesh  # trimesh/skimage only when asked

        for k in label.present_labels():
            if k > cfg.classes:
                continue
            mesh = mask_to_mesh(lab == k, image.affine)
            rel = f"cases/{case.case_id}/meshes/class_{k}.ply"
            save_mesh(mesh, case_dir.parent.parent / rel)
            meshes[str(k)] = rel

    fg = lab > 0
    slices = []
    for axis, idx in select_slices(
        lab,
        cfg.axes,
        cfg.slice_sampling,
        per_axis=cfg.slices_per_axis,
        seed=_seed_for(case.case_id),
    ):
        lab2 = take_slice(lab, axis, idx)
        rel = f"slices/{case.case_id}/{case.case_id}_a{axis}_s{idx:03d}.npz"
        save_npz(
            case_dir.parent.parent / rel,
            image=take_slice(data, axis, idx),
            mask=(lab2 > 0).astype(np.uint8),
            label=lab2,
            pointmap=slice_pointmap(
                image.affine, lab.shape, axis, idx, valid=take_slice(fg, axis, idx)
            ),
            affine=image.affine,
            slice_idx=np.int64(idx),
            axis=np.int64(axis),
            gt_sdf_path=np.str_(sdf_rel),
            case_id=np.str_(case.case_id),
        )
        slices.append(rel)

    counts = np.bincount(lab.ravel(), minlength=cfg.classes + 1)
    write_json(
        case_dir / "meta.json",
        {
            "case_id": case.case_id,
            "params_hash": _params_hash(cfg.output_params()),
            "source_image": str(case.image),
            "source_label": str(case.label),
            "source_fingerprint": source_fingerprint,
            "affine": image.affine.tolist(),
            "spacing": list(spacing),
            "shape": list(lab.shape),
            "classes_present": [int(k) for k in range(1, cfg.classes + 1) if counts[k] > 0],
            "voxels_per_class": {str(k): int(counts[k]) for k in range(1, cfg.classes + 1)},
            "label_names": {str(k): v for k, v in case.label_names.items()},
            "image": f"cases/{case.case_id}/image.npy",
            "label": f"cases/{case.case_id}/label.npy",
            "sdf": sdf_rel,
            "meshes": meshes,
            "slices": slices,
        },
    )


# --------------------------------------------------------------------------------------------
# The batch


def _versions() -> dict:
    import nibabel
    import scipy

    from core import __version__

    return {
        "sam3d-napari": __version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "nibabel": nibabel.__version__,
    }


def _open_manifest(out_dir: Path, params: dict, *, overwrite: bool) -> dict:
    path = out_dir / "manifest.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(path, f"unreadable manifest ({exc}); use a new --out folder") from exc
        if old.get("format") != "sam3d-cache":
            raise InputError(path, "not a sam3d cache manifest; use a new --out folder")
        _recorded_ct_rule(old, params)
        if old.get("params") != params:
            if not overwrite:
                changed = sorted(
                    k
                    for k in set(params) | set(old.get("params", {}))
                    if params.get(k) != old.get("params", {}).get(k)
                )
                diffs = ", ".join(
                    f"{k}: {old.get('params', {}).get(k)!r} -> {params.get(k)!r}" for k in changed
                )
                raise InputError(
                    out_dir,
                    f"cache was built with other parameters ({diffs}); "
                    "use a new --out folder, or --overwrite to rebuild it",
                )
            for sub in ("cases", "slices"):
                shutil.rmtree(out_dir / sub, ignore_errors=True)
            old = None
        if old is not None:
            old["versions"] = _versions()
            return old
    elif out_dir.exists() and any(p for p in out_dir.iterdir() if not p.name.startswith(".")):
        if not (out_dir / "cases").is_dir():
            raise InputError(
                out_dir, "output folder exists and is not a sam3d cache; choose another"
            )
    return {
        "format": "sam3d-cache",
        "format_version": FORMAT_VERSION,
        "params": params,
        "params_hash": _params_hash(params),
        "versions": _versions(),
        "cases": {},
    }


def _recorded_ct_rule(manifest: dict, params: dict) -> None:
    """A CT cache from before the intensity rule was recorded was made under today's CT rule
    (only MR and US changed): record it, so that the cache resumes as before."""
    old = manifest.get("params")
    if not isinstance(old, dict) or "intensity" in old or old.get("modality") != "ct":
        return
    window = old.get("ct_window", DEFAULT_CT_WINDOW)
    filled = {**old, "intensity": intensity_rule("ct", window)}
    if filled == params:
        manifest["params"], manifest["params_hash"] = params, _params_hash(params)


def preprocess_dataset(
    cfg: PreprocessConfig,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
    max_cases: int | None = None,
) -> PreprocessSummary:
    """Preprocess every case of a dataset folder into ``cfg.out_dir``.

    Parameters
    ----------
    cfg : the run's parameters
    progress : called as ``progress(done, total, message)`` after each case
    should_stop : polled between cases; when it returns True the run stops early, keeping
        every finished case (the summary says ``cancelled``)
    overwrite : rebuild a cache made with other parameters instead of refusing
    max_cases : process only the first N cases (sorted by id)

    Raises
    ------
    InputError
        The dataset folder cannot be read or holds no case; the output folder holds a cache
        made with other parameters (without ``overwrite``).
    """
    t0 = time.perf_counter()
    index = discover(cfg.input_dir, layout=cfg.layout)
    cfg, modality_note = cfg.resolved(index.modality)
    out_dir = Path(cfg.out_dir)
    params = cfg.output_params()
    make_output_dir(out_dir)  # a file in the way: one line naming it
    manifest = _open_manifest(out_dir, params, overwrite=overwrite)
    manifest["source"] = {"input_dir": str(Path(cfg.input_dir).resolve()), "layout": index.layout}
    manifest["label_names"] = {str(k): v for k, v in index.label_names.items()}
    write_json(out_dir / "manifest.json", manifest)

    summary = PreprocessSummary(
        str(out_dir), problems=list(index.problems) + ([modality_note] if modality_note else [])
    )
    cases = list(index.cases)[: max_cases if max_cases else None]
    phash = _params_hash(params)
    todo = []
    for case in cases:
        if case_is_done(out_dir, case.case_id, phash):
            summary.skipped.append(case.case_id)
        else:
            todo.append(case)
    total, done = len(cases), len(summary.skipped)
    if progress:
        progress(done, total, f"{done} already done")

    def record(res: CaseResult):
        nonlocal done
        done += 1
        if res.status == "done":
            summary.processed.append(res.case_id)
            manifest["cases"][res.case_id] = {"status": "done", "n_slices": res.n_slices}
        else:
            summary.failed[res.case_id] = res.message
            manifest["cases"].pop(res.case_id, None)
        write_json(out_dir / "manifest.json", manifest)
        if progress:
            progress(done, total, f"{res.case_id}: {res.status}")

    stop = should_stop or (lambda: False)
    try:
        if cfg.workers == 1 or len(todo) <= 1:
            for case in todo:
                if stop():
                    summary.cancelled = True
                    break
                record(preprocess_case(case, cfg))
        else:
            with cf.ProcessPoolExecutor(max_workers=min(cfg.workers, len(todo))) as pool:
                pending = {pool.submit(preprocess_case, c, cfg) for c in todo}
                while pending:
                    finished, pending = cf.wait(
                        pending, timeout=0.5, return_when=cf.FIRST_COMPLETED
                    )
                    for fut in finished:
                        record(fut.result())
                    if pending and stop():
                        summary.cancelled = True
                        for fut in pending:
                            fut.cancel()
                        # Cases already running finish (their writes are atomic anyway).
                        for fut in cf.as_completed([f for f in pending if not f.cancelled()]):
                            record(fut.result())
                        break
    except KeyboardInterrupt:
        summary.cancelled = True
    for cid in summary.skipped:
        manifest["cases"].setdefault(cid, {"status": "done"})
    write_json(out_dir / "manifest.json", manifest)
    summary.seconds = time.perf_counter() - t0
    write_json(out_dir / "summary.json", summary.to_dict())
    return summary


def cache_params(out_dir: str | os.PathLike) -> dict:
    """The parameters a cache was built with (from its manifest)."""
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        raise InputError(out_dir, "not a preprocessed cache (manifest.json missing)")
    return json.loads(path.read_text())["params"]
