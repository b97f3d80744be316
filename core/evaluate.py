"""``sam3d eval``: the click protocol on a labelled dataset, the model and two baselines.

Protocol (deterministic, ``core.clicks``): for each case and each labelled class, the first
click is the interior point farthest from the boundary on the class's largest 2D component in
the axial slice through its centroid; each further click goes to the centre of the largest
remaining 3D error (positive for a miss, negative for a false positive) on the axial slice
that holds it. The model refines its previous result with every click.

The same protocol drives the baselines: classical 3D region growing from the clicks, and the
extrusion of the clicked slice's 2D mask (``core.baselines``). Results go to
``metrics.json`` (rewritten after every case: an interrupted run keeps the cases it finished,
and ``complete`` is true once every case was tried): per case, class and click count, Dice,
IoU, HD95, ASSD, surface Dice and Chamfer (mm); an ``aggregate`` block with means per class
and overall (``aggregate.dice`` = mean Dice at the last click, null when nothing was
evaluated), and the same for each baseline; ``n_cases`` (cases tried), ``failed_cases`` (id:
reason; an image without a label is one), ``dataset_problems`` (what else the dataset's
discovery found wrong, e.g. a label without its image) and ``warnings`` (case id: the
model's one-line notes, e.g. values that do not look like the chosen modality, or that the
weights saw the case in training) and ``seen_in_training`` (case id: "train" when the weights
were trained on the case's scan, "val" when their run chose its best epoch on it). Seen cases
are recognised by the scans' fingerprints that training records (:func:`core.io.fingerprint`:
a copy under another name, folder or layout is caught), else by source file or case id.

The modality (how intensities are scaled) is the one asked for, else the one the dataset's
``dataset.json`` declares (nnU-Net's ``channel_names``), else CT; ``config.modality`` in
``metrics.json`` is the one used, and overriding a declared one is noted in
``dataset_problems``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from core.atomic import make_output_dir, write_json
from core.clicks import simulate_clicks
from core.datasets import discover, resolve_modality
from core.errors import InputError
from core.intensity import MODALITIES
from core.io import fingerprint, load_pair
from core.metrics import METRIC_NAMES, binary_metrics
from core.modes import MODES

__all__ = ["EvalConfig", "evaluate", "METHODS"]

METHODS = ("model", "region_growing", "extrusion")


@dataclass(frozen=True)
class EvalConfig:
    """Parameters of an evaluation run (saved in ``metrics.json``)."""

    data_root: str
    output_dir: str
    checkpoint: str | None = None
    adapter: str | None = None
    clicks: int = 5
    mode: str = "volume"
    max_cases: int | None = None
    classes: tuple[int, ...] | None = None
    layout: str | None = None
    modality: str | None = None  # None: the dataset's declared one (dataset.json), else CT
    # (low, high) HU for CT; None: the adapter's training window (its metadata), else the default
    ct_window: tuple[float, float] | None = None
    baselines: bool = True
    save_viz: bool = False
    tolerance_mm: float = 1.0

    def __post_init__(self):
        if self.clicks < 1:
            raise ValueError(f"clicks must be at least 1, got {self.clicks}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.modality is not None and self.modality not in MODALITIES:
            raise ValueError(
                f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}"
            )
        if self.ct_window is not None:
            lo, hi = (float(v) for v in self.ct_window)  # a pair of numbers
            if not hi > lo:
                raise ValueError(
                    f"ct_window must be (low, high) with high > low, got {self.ct_window}"
                )
            object.__setattr__(self, "ct_window", (lo, hi))


def _aggregate(per_case: dict, n_clicks: int) -> dict:
    """Means per class and overall, for every click count; ``dice`` at the last click (None
    when nothing was evaluated)."""
    by_class: dict[str, dict[str, list]] = {}
    for classes in per_case.values():
        for cls, by_click in classes.items():
            d = by_class.setdefault(cls, {})
            for k, m in by_click.items():
                for name in METRIC_NAMES:
                    d.setdefault(f"{name}@{k}", []).append(m[name])
    per_class = {
        cls: {key: float(np.mean(v)) for key, v in d.items()} for cls, d in sorted(by_class.items())
    }
    overall = {}
    for k in range(1, n_clicks + 1):
        for name in METRIC_NAMES:
            vals = [pc[f"{name}@{k}"] for pc in per_class.values() if f"{name}@{k}" in pc]
            if vals:
                overall[f"{name}@{k}"] = float(np.mean(vals))
    return {
        "per_class": per_class,
        "overall": overall,
        "dice": overall.get(f"dice@{n_clicks}"),
        "dice_first_click": overall.get("dice@1"),
        "n_structures": sum(len(c) for c in per_case.values()),
    }


def evaluate(
    cfg: EvalConfig,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    policy=None,
) -> dict:
    """Run the protocol; write ``metrics.json`` (and pictures with ``save_viz``).

    ``policy``: the engine's ``core.engine.CubePolicy`` (default: the engine's default).
    """
    from core.engine import Reconstructor
    from core.intensity import normalize_intensity

    out = make_output_dir(cfg.output_dir)
    index = discover(cfg.data_root, layout=cfg.layout, require_labels=False)
    modality, modality_note = resolve_modality(cfg.modality, index.modality, source=cfg.data_root)
    cfg = replace(cfg, modality=modality)  # metrics.json records the one used
    cases = [c for c in index.cases if c.label is not None][: cfg.max_cases or None]
    failed, problems = _unusable(index)
    if modality_note:
        problems.append(modality_note)
    rec = Reconstructor.from_pretrained(cfg.checkpoint, cfg.adapter, policy=policy)
    window = rec.ct_window_for(cfg.ct_window)  # the baselines see the model's intensities
    if cfg.modality == "ct":  # metrics.json records the window used
        cfg = replace(cfg, ct_window=window)
    trained = _trained_on(cfg)
    methods = METHODS if cfg.baselines else ("model",)
    results = {m: {} for m in methods}
    names: dict[str, str] = {}
    timings: list[float] = []
    warnings: dict[str, list[str]] = {}  # case id -> the model's notes (e.g. not HU)
    seen_cases: dict[str, str] = {}  # case id -> "train" / "val": the weights saw it
    t_start = time.perf_counter()
    stop = should_stop or (lambda: False)

    def write_report(*, complete: bool) -> dict:
        """metrics.json as it stands: rewritten after every case, so that an interrupted run
        (Ctrl-C, a kill) keeps the cases it finished; ``complete`` only once all were tried."""
        report = {
            "config": asdict(cfg),
            "weights": rec.name,
            "cube_policy": asdict(rec.policy),
            "label_names": names,
            "cases": results["model"],
            "aggregate": _aggregate(results["model"], cfg.clicks),
            "baselines": {
                m: {"cases": results[m], "aggregate": _aggregate(results[m], cfg.clicks)}
                for m in methods
                if m != "model"
            },
            "complete": complete,
            "n_cases": n_tried,
            "failed_cases": dict(sorted(failed.items())),
            "warnings": warnings,
            "seen_in_training": dict(sorted(seen_cases.items())),
            "dataset_problems": problems,
            "seconds": round(time.perf_counter() - t_start, 1),
            "model_latency_ms": {
                "median": float(np.median(timings) * 1000) if timings else None,
                "n": len(timings),
            },
        }
        write_json(out / "metrics.json", report)
        return report

    n_tried = len(failed)  # the images without a label
    stopped = False
    for ci, case in enumerate(cases):
        if stop():
            stopped = True
            break
        n_tried += 1
        try:
            image, label = load_pair(case.image, case.label)
        except InputError as exc:
            failed[case.case_id] = str(exc)
            write_report(complete=False)  # the cases so far, kept should the run be interrupted
            if progress:  # the bar moves past a failed case too
                progress(ci + 1, len(cases), f"{case.case_id}: failed")
            continue
        spacing = image.spacing
        classes = [k for k in label.present_labels() if cfg.classes is None or k in cfg.classes]
        norm = normalize_intensity(image.data, cfg.modality, ct_window=window)
        role, notes = _leak_note(case, image, trained)
        if role is not None:
            seen_cases[case.case_id] = role
        for k in classes:
            names[str(k)] = case.label_names.get(k, str(k))
            gt = label.data == k
            state: dict = {}
            fns = _methods(rec, image, norm, cfg, state, timings)
            for method, fn in fns.items():
                runs = simulate_clicks(fn, gt, n_clicks=cfg.clicks, spacing=spacing)
                results[method].setdefault(case.case_id, {})[str(k)] = {
                    str(i + 1): binary_metrics(
                        pred, gt, spacing=spacing, tolerance_mm=cfg.tolerance_mm
                    )
                    for i, (_, pred) in enumerate(runs)
                }
                if cfg.save_viz and method == "model":
                    _save_viz(
                        out,
                        case.case_id,
                        k,
                        names[str(k)],
                        image.data,
                        gt,
                        runs[-1][1],
                        state.get("last"),
                    )
            notes += [w for w in dict.fromkeys(state.get("warnings", ())) if w not in notes]
        if notes:
            warnings[case.case_id] = notes
        write_report(complete=False)
        if progress:
            progress(ci + 1, len(cases), case.case_id)
    return write_report(complete=not stopped)


@dataclass(frozen=True)
class _Seen:
    """What the weights saw in training, as their run recorded it: their name; per role
    ("train": trained on, "val": chose the best epoch on) case id -> source image (None when
    the run's cache is no longer there to say); and fingerprint -> (role, case id) for the
    cases whose scan was fingerprinted (:func:`core.io.fingerprint`)."""

    name: str
    sources: dict[str, dict[str, str | None]]
    fingerprints: dict[str, tuple[str, str]]


def _trained_on(cfg: EvalConfig) -> _Seen | None:
    """What the weights saw in training (the adapter's ``sam3d_adapter.json``, or a full
    run's ``.safetensors`` JSON); None when nothing is recorded (the shipped base)."""
    if cfg.adapter is not None:
        from core.adapter_files import read_adapter_info
        from core.weights import resolve_adapter

        folder = resolve_adapter(cfg.adapter)
        name, data = f"adapter {folder}", read_adapter_info(folder).get("data")
    elif cfg.checkpoint is not None and Path(cfg.checkpoint).suffix != ".pt":
        from core.weights import read_weights_info

        trained_on = read_weights_info(cfg.checkpoint).get("trained_on")
        name = f"weights {cfg.checkpoint}"
        data = trained_on.get("data") if isinstance(trained_on, dict) else None
    else:
        return None
    if not isinstance(data, dict) or not data.get("train_cases"):
        return None
    sources: dict[str, dict[str, str | None]] = {}
    prints: dict[str, tuple[str, str]] = {}
    for role in ("train", "val"):
        cache = Path(str(data.get(f"{role}_cache") or ""))
        sources[role] = {}
        for cid in data.get(f"{role}_cases") or ():
            try:
                meta = json.loads((cache / "cases" / cid / "meta.json").read_text())
                sources[role][cid] = meta["source_image"]
            except (OSError, ValueError, KeyError, TypeError):
                sources[role][cid] = None
        recorded = data.get(f"{role}_fingerprints")
        for cid, fp in recorded.items() if isinstance(recorded, dict) else ():
            if isinstance(fp, str) and cid in sources[role]:
                prints.setdefault(fp, (role, cid))
    return _Seen(name, sources, prints)


_SEEN = {
    "train": "was trained on this image{as_}: its scores here overstate what the weights do "
    "on unseen data (evaluate on held-out cases)",
    "val": "chose its best epoch on this image (a validation case of its run{as_}): its "
    "scores here are optimistic (evaluate on cases the run never saw)",
}


def _leak_note(case, image, seen: _Seen | None) -> tuple[str | None, list[str]]:
    """Whether the weights saw this case in training ("train", "val" or None) and the warning
    that says so: the same scan by fingerprint, whatever its name or folder; for cases the run
    did not fingerprint, the same source file, or the same case id where the training cache
    is gone and the files cannot be compared."""
    if seen is None:
        return None, []
    fp = fingerprint(image) if seen.fingerprints else None
    if fp in seen.fingerprints:
        role, cid = seen.fingerprints[fp]
        as_ = "" if cid == case.case_id else f", as its case {cid}"
        return role, [f"{seen.name} " + _SEEN[role].format(as_=as_)]
    printed = {cid for _, cid in seen.fingerprints.values()}
    for role, cases in seen.sources.items():
        if case.case_id not in cases or case.case_id in printed:
            continue  # fingerprinted: another scan that happens to share the id
        source = cases[case.case_id]
        if source is None:
            return role, [
                f"{seen.name} saw a case with this id during its training run (its cache is gone: the "
                "files cannot be compared): if it is this image, its scores here overstate "
                "what the weights do on unseen data"
            ]
        if Path(source).resolve() == Path(case.image).resolve():
            return role, [f"{seen.name} " + _SEEN[role].format(as_="")]
    return None, []


def _unusable(index) -> tuple[dict[str, str], list[str]]:
    """What the dataset's discovery could not use: each image without a label as a failed
    case (id: the discovery's line about it), every other problem (a label without its
    image, an unreadable dataset.json) as a line."""
    failed, problems = {}, list(index.problems)
    for case in index.cases:
        if case.label is None:
            line = next((p for p in problems if p.startswith(f"{case.image}: ")), None)
            if line is not None:
                problems.remove(line)
            failed[case.case_id] = line or f"{case.image}: image without label"
    return failed, problems


def _methods(rec, image, norm, cfg: EvalConfig, state: dict, timings: list) -> dict:
    """``prompts -> bool mask`` for the model (refining its last result, kept in ``state``)
    and, unless disabled, the two baselines."""
    from core.baselines import extrude_slice_mask, region_growing

    spacing = image.spacing

    def model_fn(prompts):
        t = time.perf_counter()
        res = rec.predict(
            image,
            prompts,
            mode=cfg.mode,
            modality=cfg.modality,
            ct_window=cfg.ct_window,
            previous=state.get("last"),
            mesh=False,
        )
        timings.append(time.perf_counter() - t)
        state["last"] = res
        state.setdefault("warnings", []).extend(res.warnings)
        return res.mask

    fns = {"model": model_fn}
    if cfg.baselines:
        fns["region_growing"] = lambda p: region_growing(norm, p, spacing=spacing)
        fns["extrusion"] = lambda p: extrude_slice_mask(norm, p, spacing=spacing)
    return fns


def _save_viz(out: Path, case_id: str, k: int, name: str, image, gt, pred, result) -> None:
    from core.viz import comparison_grid, overlay_views

    d = out / "viz"
    tag = f"{case_id}_class{k}"
    comparison_grid(image, gt, pred, d / f"{tag}_grid.png", title=f"{case_id}: {name}")
    overlay_views(image, pred, d / f"{tag}_overlay.png", gt=gt, title=f"{case_id}: {name}")
    if result is not None and result.mask.any():
        from core.mesh import mask_to_mesh, save_mesh

        save_mesh(mask_to_mesh(result.mask, result.affine), d / f"{tag}_pred.ply")
        save_mesh(mask_to_mesh(gt, result.affine), d / f"{tag}_gt.ply")


def summary_table(report: dict) -> str:
    """A Markdown table: per class, Dice@1 and Dice@N (one column when N is 1) and HD95@N for
    the model, and Dice@N for each baseline the report holds (none with ``baselines=False``:
    no empty columns)."""
    n = report["config"]["clicks"]
    clicks = sorted({1, n})
    names = report.get("label_names", {})
    titles = {"region_growing": "region growing", "extrusion": "extrusion"}
    runs = report.get("baselines", {})
    shown = [m for m in titles if m in runs] + [m for m in runs if m not in titles]
    head = [f"model Dice@{k}" for k in clicks] + [f"model HD95@{n} (mm)"]
    head += [f"{titles.get(m, m)} Dice@{n}" for m in shown]
    rows = [
        "| structure | " + " | ".join(head) + " |",
        "| --- | " + " | ".join("---" for _ in head) + " |",
    ]
    nan = float("nan")

    def row(label: str, model: dict, baseline: list[dict]) -> str:
        cells = [f"{model[f'dice@{k}']:.3f}" for k in clicks] + [f"{model[f'hd95@{n}']:.1f}"]
        cells += [f"{b.get(f'dice@{n}', nan):.3f}" for b in baseline]
        return f"| {label} | " + " | ".join(cells) + " |"

    agg = report["aggregate"]["per_class"]
    for cls in agg:
        per = [runs[m]["aggregate"]["per_class"].get(cls, {}) for m in shown]
        rows.append(row(names.get(cls, cls), agg[cls], per))
    overall = [runs[m]["aggregate"]["overall"] for m in shown]
    rows.append(row("**mean**", report["aggregate"]["overall"], overall))
    return "\n".join(rows)


def load_report(path) -> dict:
    return json.loads(Path(path).read_text())
