"""Benchmark: a click on a clinical-size CT (512 x 512 x 300-600 voxels), and loading one.

    .venv/bin/python bench/large_volume.py [--repeats 5] [--sizes 512x512x300@0.7x0.7x1.0 ...]
        [--modes volume slice] [--threads 2] [--load_repeats 3] [--no_load] [--json F]

Each volume is the synthetic heart (``core.synthetic.make_heart_phantom``) rendered on a
coarse grid of the same field of view (about 2.8 mm voxels) and resampled linearly (labels by
nearest neighbour) to the clinical grid, float32 HU on a RAS+ affine, as ``core.io.load_image``
gives. Defaults: 512 x 512 x 300 at 0.7 x 0.7 x 1.0 mm and 512 x 512 x 600 at 0.8 x 0.8 x 0.5 mm.

Per volume and mode, each repeat is:

- a *first click* (``core.clicks.first_click`` on structure ``1 + r % 5``) on a fresh copy of
  the array, as after opening a file: the engine keeps per-volume work (the intensity
  normalisation) for the next click on the same array object, so a new array pays for it;
- a *second click*: the evaluation's corrective click (``core.clicks.next_click``) refining
  the first result (``previous=``), on the same array.

It reports the median wall time of each (``predict`` end to end), the medians of the engine's
own ``timings`` (normalize, inputs, forward, paste, mesh), and the process's resident memory
right before a first click (the model, the volume, its label map and the fresh copy) and its
peak during the two clicks (``VmHWM``, reset through ``/proc/self/clear_refs``; the largest
over the repeats). Copies are made before the timer starts. ``--json`` also records digests
of every result (mask, slice mask, cube probabilities, mesh): two checkouts' files compare
their results exactly. Then, unless ``--no_load``, the
median time of ``core.io.load_image`` on the first volume saved as .nii.gz, stored as int16
(the usual CT file), as int16 with a rescale slope and intercept (as scanners write it) and as
float32.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("normalize", "inputs", "forward", "paste", "mesh")
DEFAULT_SIZES = ("512x512x300@0.7x0.7x1.0", "512x512x600@0.8x0.8x0.5")


def parse_size(text: str) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """``"512x512x300@0.7x0.7x1.0"`` -> ((512, 512, 300), (0.7, 0.7, 1.0))."""
    shape, _, spacing = text.partition("@")
    dims = tuple(int(v) for v in shape.split("x"))
    sp = tuple(float(v) for v in (spacing or "1x1x1").split("x"))
    if len(dims) != 3 or len(sp) != 3:
        raise argparse.ArgumentTypeError(f"expected IxJxK@SIxSJxSK, got {text!r}")
    return dims, sp


def clinical_phantom(shape, spacing, *, seed: int = 7, coarse_mm: float = 2.8):
    """The synthetic heart on a clinical grid: (image Volume float32 HU, label uint8 array).

    Rendered at about ``coarse_mm`` over the same field of view, then resampled (linear for
    the image, nearest for the labels): rendering 10^8 voxels directly takes minutes."""
    from scipy import ndimage

    from core.io import Volume
    from core.synthetic import make_heart_phantom

    shape, sp = np.array(shape), np.array(spacing, dtype=np.float64)
    coarse = np.maximum(16, np.round(shape * sp / coarse_mm)).astype(int)
    image, label = make_heart_phantom(seed, shape=tuple(coarse), spacing=tuple(shape * sp / coarse))
    zoom = shape / coarse
    data = ndimage.zoom(image.data, zoom, order=1).astype(np.float32, copy=False)
    lab = ndimage.zoom(label.data, zoom, order=0)
    affine = np.diag([*sp, 1.0])
    affine[:3, 3] = -(shape - 1) / 2.0 * sp  # RAS+, centred on world (0, 0, 0)
    return Volume(data, affine, "phantom"), lab


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak() -> float:
    """Reset the process's peak RSS to its current RSS (Linux); return the current RSS, MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def peak_mb() -> float:
    """The peak RSS since the last :func:`reset_peak` (Linux), else of the process, MB."""
    v = _status_mb("VmHWM")
    return v if v == v else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def digest(res) -> dict:
    """sha256 prefixes of a result's arrays, to compare two checkouts' results exactly."""

    def h(a):
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]

    mesh = None if res.mesh is None else h(res.mesh.vertices) + h(res.mesh.faces)
    out = {"mask": h(res.mask), "slice_mask": h(res.slice_mask), "mesh": mesh}
    return {**out, "probability": h(res.cube_probability), "voxels": int(res.mask.sum())}


def clicks(rec, image, label, mode: str, repeats: int) -> dict:
    """Time ``repeats`` first clicks (each on a fresh copy of the array) and their second
    clicks; see the module docstring."""
    from core.clicks import PromptSet, first_click, next_click
    from core.io import Volume

    first, second, before, peak, digests = [], [], [], [], []
    for r in range(repeats):
        k = 1 + r % 5
        gt = label == k
        click = first_click(gt)
        volume = Volume(image.data.copy(), image.affine, image.path)  # a newly opened file
        before.append(reset_peak())
        t = time.perf_counter()
        res = rec.predict(volume, PromptSet((click,)), mode=mode)
        wall = (time.perf_counter() - t) * 1000.0
        first.append({**res.timings, "wall": wall})
        fix, res2 = next_click(res.mask, gt, spacing=image.spacing), None
        if fix is not None:
            t = time.perf_counter()
            res2 = rec.predict(volume, PromptSet((click, fix)), mode=mode, previous=res)
            wall = (time.perf_counter() - t) * 1000.0
            second.append({**res2.timings, "wall": wall})
        peak.append(peak_mb())
        digests += [digest(r) for r in (res, res2) if r is not None]
        del volume, res, res2
        gc.collect()  # the next baseline holds none of this click's arrays
    return {
        "first": first,
        "second": second,
        "rss_before_mb": before,
        "rss_peak_mb": peak,
        "digests": digests,
    }


def _median(rows, key) -> float:
    vals = [r.get(key, 0.0) for r in rows]
    return float(np.median(vals)) if vals else float("nan")


def time_loading(image, repeats: int) -> list[dict]:
    """Median ``load_image`` time of ``image`` saved as .nii.gz: int16, int16 with a rescale
    slope and intercept (nibabel then scales in float64), float32."""
    import nibabel as nib

    from core.io import load_image

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for stored in ("int16", "int16 rescaled", "float32"):
            path = Path(tmp) / f"ct_{stored.replace(' ', '_')}.nii.gz"
            if stored == "float32":
                img = nib.Nifti1Image(image.data, image.affine)
            elif stored == "int16":
                img = nib.Nifti1Image(np.round(image.data).astype(np.int16), image.affine)
            else:  # as scanners write: unsigned-looking values, slope 1, intercept -1024
                img = nib.Nifti1Image(np.round(image.data + 1024).astype(np.int16), image.affine)
                img.header.set_slope_inter(1.0, -1024.0)
            nib.save(img, str(path))
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                vol = load_image(path)
                times.append(time.perf_counter() - t)
                del vol
            out.append(
                {
                    "stored": stored,
                    "file_mb": path.stat().st_size / 2**20,
                    "median_s": float(np.median(times)),
                    "times_s": times,
                }
            )
            path.unlink()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=None)
    ap.add_argument("--modes", nargs="+", default=["volume", "slice"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--load_repeats", type=int, default=3)
    ap.add_argument("--no_load", action="store_true", help="skip timing load_image")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    sizes = a.sizes or [parse_size(s) for s in DEFAULT_SIZES]
    import torch

    torch.set_num_threads(a.threads)
    from core.engine import Reconstructor

    rec = Reconstructor.from_pretrained(a.checkpoint)
    rec.warm_up()  # as every front end does in the background
    rows, loads = [], []
    for shape, spacing in sizes:
        t = time.perf_counter()
        image, label = clinical_phantom(shape, spacing)
        made_s = time.perf_counter() - t
        for mode in a.modes:
            got = clicks(rec, image, label, mode, a.repeats)
            row = {
                "volume": "x".join(map(str, shape)) + " @ " + "x".join(f"{s:g}" for s in spacing),
                "mode": mode,
                "phantom_s": made_s,
                "n": len(got["first"]),
                "n_second": len(got["second"]),
                **got,
                "rss_before_mb": float(np.median(got["rss_before_mb"])),
                "rss_peak_mb": float(max(got["rss_peak_mb"])),
            }
            for which in ("first", "second"):
                for key in ("wall", "total", *STAGES):
                    row[f"{which}_{key}_ms"] = _median(got[which], key)
            rows.append(row)
        if not a.no_load and not loads:
            loads = time_loading(image, a.load_repeats)
        del image, label
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"machine: {platform.machine()}, torch threads {a.threads}, weights {rec.name}, "
        f"precision {rec.precision}, {a.repeats} repeats, process peak RSS {peak:.0f} MB\n"
    )
    head = " | ".join(STAGES)
    print(f"| volume | mode | click | wall ms | {head} | RSS before / peak during, MB |")
    print("| --- | --- | --- | --- |" + " --- |" * len(STAGES) + " --- |")
    for r in rows:
        for which in ("first", "second"):
            stages = " | ".join(f"{r[f'{which}_{k}_ms']:.0f}" for k in STAGES)
            rss = f"{r['rss_before_mb']:.0f} / {r['rss_peak_mb']:.0f}" if which == "first" else ""
            print(
                f"| {r['volume']} | {r['mode']} | {which} | {r[f'{which}_wall_ms']:.0f} | "
                f"{stages} | {rss} |"
            )
    if loads:
        v = rows[0]["volume"]
        print(f"\nload_image of the {v} volume (.nii.gz, {a.load_repeats} repeats):\n")
        print("| stored as | file MB | median s |")
        print("| --- | --- | --- |")
        for x in loads:
            print(f"| {x['stored']} | {x['file_mb']:.0f} | {x['median_s']:.2f} |")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "load": loads, "peak_rss_mb": peak}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
