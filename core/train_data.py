"""Training data: a cache or a raw dataset folder (preprocessed once), the case-level
train/validation split (no leakage), and the loaders.

``build_data`` turns ``cfg.data`` into a ``TrainData``: the training dataset, its
``DistributedSampler`` (one process or many, wrapped to pass the epoch along with each index),
the training loader, fixed validation loaders per prompt mode and a summary
(``data_summary.json``). The loaders' data workers live through the whole run
(``persistent_workers``): they start once, and the per-case caches they fill (memory maps,
class bounding boxes) serve every epoch instead of being rebuilt at each epoch's start.
"""

from __future__ import annotations

import itertools
import json
import signal
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler, Subset
from torch.utils.data.distributed import DistributedSampler

from core.config import TrainConfig
from core.cubes import CubeDataset

if TYPE_CHECKING:
    from core.train import Dist

__all__ = ["TrainData", "EpochSampler", "build_data", "check_same_split", "split_cases"]


def split_cases(case_ids, *, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out whole cases for validation (slices of one case never end up on both sides).

    Deterministic for ``seed``; at least one case on each side when ``val_fraction`` > 0.
    """
    ids = sorted(set(case_ids))
    if val_fraction <= 0:
        return ids, []
    if len(ids) < 2:
        raise ValueError(
            f"a validation split needs at least 2 cases, the cache has {len(ids)}; "
            "set data.val_fraction=0 or give data.val_data"
        )
    n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
    perm = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in perm[:n_val])
    return sorted(set(ids) - set(val)), val


def _check_splittable(src: Path) -> None:
    """A raw folder with fewer than 2 labelled cases cannot be split for validation: said
    before preprocessing it (a cache is checked by :func:`split_cases`)."""
    from core.datasets import discover
    from core.errors import InputError

    if (src / "manifest.json").is_file() or not src.is_dir():
        return
    try:
        n = sum(c.label is not None for c in discover(src, require_labels=False).cases)
    except InputError:
        return  # preprocessing says what is wrong with the folder
    if n < 2:
        raise ValueError(
            f"{src}: a validation split needs at least 2 cases, the folder has {n} with a "
            "label; set data.val_fraction=0 or give data.val_data"
        )


def _as_cache(
    path: str, cache_dir: Path, cfg: TrainConfig, d: Dist, log, progress, stop, skipped: dict
):
    """A cache folder for ``path``: itself when it is one, else ``cache_dir`` after
    preprocessing the raw dataset into it (rank 0; the others wait). None when stopped.
    An unset ``data.modality`` is settled here: a cache's own, or what a raw folder's
    ``dataset.json`` declares, else CT (the adapter and config.json record it).
    What preprocessing could not use goes into ``skipped`` (rank 0): ``failed`` (case id:
    reason) and ``dataset_problems`` (the dataset discovery's lines)."""
    from core.datasets import dataset_modality, resolve_modality
    from core.preprocess import PreprocessConfig, cache_params, preprocess_dataset

    src = Path(path)
    if (src / "manifest.json").is_file():
        params = cache_params(src)
        k = params.get("classes")
        if cfg.data.classes is not None and k != cfg.data.classes:
            raise ValueError(
                f"{src}: cache was built with {k} classes but data.classes is {cfg.data.classes}"
            )
        # the adapter records data.modality, and front ends warn when it is run on another
        modality = params.get("modality")
        if cfg.data.modality is None:  # not chosen: the cache's own (caches before it: CT)
            cfg.data.modality = modality or "ct"
        if modality is not None and modality != cfg.data.modality:
            raise ValueError(
                f"{src}: cache was normalised as {modality} but data.modality is "
                f"{cfg.data.modality}: set data.modality={modality}"
            )
        # MR and US caches made before the rule was recorded hold a z-score (MR) or [0, 1]
        # (US): an adapter trained on them would see other intensities at inference
        rule = params.get("intensity")
        expected = _intensity(src, cfg.data.modality)[0]
        if rule != expected and (rule is not None or cfg.data.modality != "ct"):
            made = f"as '{rule}'" if rule else "under an earlier rule (none in its manifest)"
            raise ValueError(
                f"{src}: cache intensities were normalised {made}, not as '{expected}': "
                "preprocess it again (sam3d preprocess --overwrite)"
            )
        return src
    if not src.is_dir():
        raise ValueError(f"{src}: data folder not found")
    if cfg.data.modality is None:  # not chosen: what the dataset declares, else CT
        declared = dataset_modality(src)
        cfg.data.modality = resolve_modality(None, declared)[0]
        if declared:
            log(f"data.modality={declared}: declared by {src / 'dataset.json'}")
    if cfg.data.classes is None:
        raise ValueError(
            f"{src}: a raw dataset folder (no manifest.json) is preprocessed first, which "
            "needs data.classes (the number of label classes)"
        )
    pcfg = PreprocessConfig(
        input_dir=str(src),
        out_dir=str(cache_dir),
        classes=cfg.data.classes,
        spacing=cfg.data.spacing,
        modality=cfg.data.modality,
    )
    cancelled = False
    if d.master:
        log(f"preprocessing {src} -> {cache_dir}")
        pp = (lambda i, n, m: progress(i, n, f"preprocess {m}")) if progress else None
        summary = preprocess_dataset(pcfg, progress=pp, should_stop=stop)
        log(summary.report())
        skipped["failed"].update(summary.failed)
        skipped["dataset_problems"] += summary.problems
        if summary.n_done == 0 and not summary.cancelled:
            first = next(iter(sorted(summary.failed.items())), None)
            example = f", e.g. {first[0]}: {first[1]}" if first else ""
            problems = f"; {len(summary.problems)} dataset problem(s)" if summary.problems else ""
            raise ValueError(
                f"{src}: no case could be preprocessed ({len(summary.failed)} failed{example}"
                f"{problems}; all listed in the run's train.log)"
            )
        cancelled = summary.cancelled
    if d.world > 1:
        flag = [cancelled]
        dist.broadcast_object_list(flag, src=0)
        cancelled = flag[0]
    return None if cancelled else cache_dir


def _cases_of(path: str, cache: Path, cfg: TrainConfig) -> list[str]:
    """The cases to use from ``cache``: all of them when ``path`` is the cache itself; for a
    raw folder, only those the folder holds now (its cache in the run folder keeps the cases
    of earlier attempts, e.g. one the user has since taken out of the folder)."""
    from core.datasets import discover

    ids = CubeDataset(cache, model_cfg=cfg.model, sampling=cfg.sampling).case_ids
    if Path(path).resolve() == Path(cache).resolve():
        return ids
    present = {c.case_id for c in discover(path).cases}
    return [c for c in ids if c in present]


def _shared_scans(train_cache: Path, val_cache: Path, ids) -> list[str]:
    """The case ids of ``ids`` (in both caches) whose two cases hold the same scan. Caches
    made with the same parameters are compared by their preprocessed images (a case copied
    into another folder or layout is caught; ``sam3d synth`` hearts of another seed share ids,
    not images); caches made otherwise cannot be compared, and one id is taken for one case."""
    from core.preprocess import cache_params

    if cache_params(train_cache) != cache_params(val_cache):
        return sorted(ids)

    def same(case_id: str) -> bool:
        images = [Path(c) / "cases" / case_id / "image.npy" for c in (train_cache, val_cache)]
        try:
            a, b = (np.load(p, mmap_mode="r") for p in images)
        except (OSError, ValueError):
            return True
        return a.shape == b.shape and bool(np.array_equal(a, b))

    return [c for c in sorted(ids) if same(c)]


def _fingerprints(cache: Path, ids) -> dict[str, str | None]:
    """Case id -> the fingerprint of its source scan, as preprocessing recorded it (None for a
    cache made before fingerprints were recorded)."""
    out = {}
    for cid in ids:
        try:
            meta = json.loads((Path(cache) / "cases" / cid / "meta.json").read_text())
            out[cid] = meta.get("source_fingerprint")
        except (OSError, ValueError, AttributeError):
            out[cid] = None
    return out


def check_same_split(path: Path, before: dict | None, now: dict) -> None:
    """A resumed run must train and validate on the cases it started with: cases added to
    (or gone from) its data would redraw the split, so that cases trained on in earlier epochs
    could become validation cases (leakage) and validation Dice would change meaning."""
    if not before:  # a checkpoint from before the summary was kept in it
        return
    for side in ("train", "val"):
        was, is_ = set(before.get(f"{side}_cases", ())), set(now[f"{side}_cases"])
        if was != is_:
            added, gone = sorted(is_ - was), sorted(was - is_)
            change = "; ".join(
                f"{what} {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}"
                for what, ids in (("now in it:", added), ("no longer in it:", gone))
                if ids
            )
            name = "training" if side == "train" else "validation"
            raise ValueError(
                f"{path}: the run's data changed since it started, so its {name} cases "
                f"differ ({change}): resume with the same data, or start a new run in another "
                "training.output_dir"
            )


def split_seed(cfg: TrainConfig) -> int:
    """The seed of the case split and validation items: ``data.split_seed``, else
    ``training.seed``."""
    s = cfg.data.split_seed
    return cfg.training.seed if s is None else s


def _fixed_val_loaders(cache, case_ids, cfg: TrainConfig, pin: bool) -> dict:
    """Validation items that never change during a run: the first ``val_cases`` held-out
    cases, ``val_items`` items evenly spread over their slices, drawn once with a fixed seed
    and epoch, in "volume" and in "slice" mode (the same cubes and prompts for both)."""
    loaders = {}
    for mode, p_volume in (("volume", 1.0), ("slice", 0.0)):
        sampling = replace(cfg.sampling, p_volume=p_volume, intensity_jitter=0.0)
        ds = CubeDataset(
            cache,
            model_cfg=cfg.model,
            sampling=sampling,
            case_ids=case_ids,
            seed=split_seed(cfg) + 1,
        )
        idx = np.unique(np.linspace(0, len(ds) - 1, min(cfg.training.val_items, len(ds))).round())
        # a worker builds whole batches: more workers than batches would only sit idle
        workers = min(cfg.data.num_workers, -(-len(idx) // cfg.training.batch_size))
        loaders[mode] = DataLoader(
            Subset(ds, [int(i) for i in idx]),
            batch_size=cfg.training.batch_size,
            shuffle=False,
            **_worker_args(workers, split_seed(cfg)),
            pin_memory=pin,
        )
    return loaders


def _ignore_sigint(_worker_id: int) -> None:
    """Data workers leave Ctrl-C to the training process (which stops the run and ends them);
    otherwise each would run the CLI's handler too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_args(workers: int, seed: int) -> dict:
    """DataLoader settings shared by the training and validation loaders: workers that live
    through the run, and a generator of the loader's own for the workers' base seed, so that
    creating an iterator draws nothing from the global RNG (which then goes the same way in a
    run and in its resumed continuation, whatever the number of workers)."""
    return {
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "worker_init_fn": _ignore_sigint if workers > 0 else None,
        "generator": torch.Generator().manual_seed(seed),
    }


class EpochSampler(Sampler):
    """A ``DistributedSampler``'s first ``limit`` indices, each as ``(epoch, index)``.

    Items draw their randomness from (seed, epoch, index). Persistent data workers keep the
    dataset copy they started with and never see ``CubeDataset.set_epoch``: the epoch travels
    with each index instead, so an epoch's items are the same with any number of workers."""

    def __init__(self, sampler: DistributedSampler, limit: int | None = None):
        self.sampler = sampler
        self.limit = len(sampler) if limit is None else min(int(limit), len(sampler))

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, int(i)) for i in itertools.islice(self.sampler, self.limit))

    def __len__(self) -> int:
        return self.limit


@dataclass(frozen=True)
class TrainData:
    train_ds: CubeDataset
    sampler: EpochSampler
    loader: DataLoader
    val_loaders: dict
    steps_per_epoch: int
    summary: dict


def _intensity(cache: Path, modality: str) -> tuple[str, list[float] | None]:
    """How a cache's images were normalised: the rule's line, and its CT window (None for MR
    and US). Caches made before the window was recorded used the default one."""
    from core.intensity import DEFAULT_CT_WINDOW, intensity_rule
    from core.preprocess import cache_params

    if modality != "ct":
        return intensity_rule(modality), None
    window = [float(v) for v in cache_params(cache).get("ct_window", DEFAULT_CT_WINDOW)]
    return intensity_rule(modality, window), window


def build_data(cfg: TrainConfig, d: Dist, out: Path, log, progress, stop) -> TrainData | None:
    """Caches (preprocessing raw folders), the split by case, the datasets and loaders.
    None when ``stop`` ended preprocessing."""
    tc = cfg.training
    skipped: dict = {"failed": {}, "dataset_problems": []}
    if not cfg.data.val_data and cfg.data.val_fraction > 0:
        _check_splittable(Path(cfg.data.train_data))
    as_cache = partial(_as_cache, cfg=cfg, d=d, log=log, progress=progress, stop=stop)
    train_cache = as_cache(cfg.data.train_data, out / "cache", skipped=skipped)
    if train_cache is None:
        return None
    all_ids = _cases_of(cfg.data.train_data, train_cache, cfg)
    if cfg.data.val_data:
        val_cache = as_cache(cfg.data.val_data, out / "cache_val", skipped=skipped)
        if val_cache is None:
            return None
        train_ids = all_ids
        val_ids = _cases_of(cfg.data.val_data, val_cache, cfg)
        val_rule, train_rule = (
            _intensity(c, cfg.data.modality)[0] for c in (val_cache, train_cache)
        )
        if val_rule != train_rule:  # validation would score other inputs than training sees
            raise ValueError(
                f"{val_cache}: validation intensities were normalised as '{val_rule}' but the "
                f"training cache {train_cache} as '{train_rule}': preprocess both with the "
                "same --ct_window"
            )
        shared = _shared_scans(train_cache, val_cache, set(train_ids) & set(val_ids))
        if shared:
            raise ValueError(
                f"data.val_data shares cases with data.train_data ({', '.join(shared[:5])}): "
                "validation would leak training data"
            )
    else:
        val_cache = train_cache
        train_ids, val_ids = split_cases(
            all_ids, val_fraction=cfg.data.val_fraction, seed=split_seed(cfg)
        )
    val_ids = val_ids[: tc.val_cases]
    train_ds = CubeDataset(
        train_cache, model_cfg=cfg.model, sampling=cfg.sampling, case_ids=train_ids, seed=tc.seed
    )
    cuda = d.device.type == "cuda"
    # One sampler for one or many processes: a permutation seeded by (seed, epoch), so an
    # epoch's order survives a resume and N processes split exactly one process's batches.
    per_rank = DistributedSampler(train_ds, num_replicas=d.world, rank=d.rank, seed=tc.seed)
    batches = len(per_rank) // tc.batch_size
    if batches < tc.grad_accum:
        raise ValueError(
            f"{train_cache}: {len(train_ds)} training items are too few for batch_size "
            f"{tc.batch_size} x grad_accum {tc.grad_accum} x {d.world} process(es)"
        )
    steps = batches // tc.grad_accum
    if tc.steps_per_epoch is not None:
        steps = min(steps, tc.steps_per_epoch)
    # Only the items an epoch trains on: persistent workers would otherwise go on building
    # the rest of the permutation, delaying the next epoch's first batch.
    sampler = EpochSampler(per_rank, limit=steps * tc.grad_accum * tc.batch_size)
    loader = DataLoader(
        train_ds,
        batch_size=tc.batch_size,
        sampler=sampler,
        drop_last=True,
        **_worker_args(cfg.data.num_workers, tc.seed),
        pin_memory=cuda,
    )
    val_loaders = _fixed_val_loaders(val_cache, val_ids, cfg, cuda) if val_ids else {}
    rule, window = _intensity(train_cache, cfg.data.modality)
    summary = {
        "train_cache": str(train_cache),
        "val_cache": str(val_cache) if val_ids else None,
        "train_cases": train_ids,
        "val_cases": val_ids,
        # each case's scan (core.io.fingerprint): evaluation recognises it under any name
        "train_fingerprints": _fingerprints(train_cache, train_ids),
        "val_fingerprints": _fingerprints(val_cache, val_ids),
        # how the inputs were normalised: front ends run an adapter in its training window
        "intensity": rule,
        "ct_window": window,
        "n_train_cases": len(train_ids),
        "n_val_cases": len(val_ids),
        "n_train_items": len(train_ds),
        "n_val_items": {m: len(v.dataset) for m, v in val_loaders.items()},
        "preprocess_failed": skipped["failed"],
        "dataset_problems": skipped["dataset_problems"],
    }
    return TrainData(train_ds, sampler, loader, val_loaders, steps, summary)
