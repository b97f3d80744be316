"""Benchmark (tried, not kept): following an elongated structure along the slice axis.

The head-and-neck adapter draws a short piece of the spinal cord and the oesophagus around the
first click (40-90 mm of a 170-250 mm cord; the cube is not the limit). This tries the
inference-side remedy: while the mask is elongated along the click's axis (its length at least
``--ratio`` times its widest in-plane extent), click again, as a fresh first click, on the
interior point of the mask's slice ``--back`` slices inside each end, and keep what the new
mask adds beyond that end; stop on each side when the new mask extends it by fewer than
``--min_gain`` slices, when it disagrees with the old one on the 6 slices before the end (Dice
under 0.5), or after ``--steps`` clicks. Prints Dice@1 per class (plain, followed) and the mean
of the class means, as ``sam3d eval`` aggregates.

    .venv/bin/python bench/follow_tubes.py --which headneck --adapter headneck-ct [--mode slice]

On held-out validation cases only (``bench/engine_val.py``: the adapter's 12 held-out
openkbp_train cases, never openkbp_val).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def _filled(mask: np.ndarray, axis: int) -> np.ndarray:
    """Indices of the ``axis`` slices that hold any of ``mask``."""
    return np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))


def elongated(mask: np.ndarray, axis: int, spacing, ratio: float) -> bool:
    """The mask is at least ``ratio`` times longer along ``axis`` than its widest in-plane
    extent (mm)."""
    zs = _filled(mask, axis)
    if len(zs) == 0:
        return False
    length = (zs[-1] - zs[0] + 1) * spacing[axis]
    width = max((np.ptp(_filled(mask, o)) + 1) * spacing[o] for o in range(3) if o != axis)
    return length >= ratio * width


def follow(predict, mask, axis, *, back=2, steps=4, min_gain=3, min_overlap=0.5):
    """``mask`` extended along ``axis`` by fresh first clicks near each end (see the module
    docstring). ``predict(click) -> bool mask``. Returns (mask, clicks used)."""
    from core.clicks import Click
    from core.geometry import take_slice
    from core.metrics import dice
    from core.prompts import interior_point

    out, used = mask.copy(), 0
    for d in (-1, 1):
        for _ in range(steps):
            zs = _filled(out, axis)
            end = int(zs[-1] if d > 0 else zs[0])
            inner = end - d * back
            sl = take_slice(out, axis, inner) if 0 <= inner < out.shape[axis] else None
            if sl is None or not sl.any():
                break
            r, c = interior_point(sl)
            new = predict(Click(axis, inner, int(r), int(c), True))
            used += 1
            nz = _filled(new, axis)
            if len(nz) == 0 or (int(nz[-1] if d > 0 else nz[0]) - end) * d < min_gain:
                break
            near = [slice(None)] * 3
            near[axis] = slice(max(min(end, end - d * 6), 0), max(end, end - d * 6) + 1)
            if dice(new[tuple(near)], out[tuple(near)]) < min_overlap:
                break
            beyond = [slice(None)] * 3
            beyond[axis] = slice(end + 1, None) if d > 0 else slice(0, end)
            out[tuple(beyond)] |= new[tuple(beyond)]
    return out, used


def main(argv=None) -> int:
    import engine_val

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    engine_val.add_validation_args(ap)
    ap.add_argument("--mode", default="volume", choices=("volume", "slice"))
    ap.add_argument("--ratio", type=float, default=1.5, help="elongation that triggers it")
    ap.add_argument("--back", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--min_gain", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "follow_val")
    a = ap.parse_args(argv)

    from core.clicks import PromptSet
    from core.metrics import dice

    found = engine_val.structures(a, a.out)
    if found is None:
        return 0
    rec, structures = found
    per_class: dict[int, list] = {}
    clicks: list[int] = []
    for case_id, image, k, gt, click in structures:

        def predict(click, image=image):
            return rec.predict(image, PromptSet((click,)), mode=a.mode, mesh=False).mask

        plain = predict(click)
        followed, used = plain, 0
        if elongated(plain, click.axis, image.spacing, a.ratio):
            followed, used = follow(
                predict, plain, click.axis, back=a.back, steps=a.steps, min_gain=a.min_gain
            )
        clicks.append(used)
        row = [dice(plain, gt), dice(followed, gt)]
        per_class.setdefault(k, []).append(row)
        print(case_id, k, used, " ".join(f"{x:.3f}" for x in row), flush=True)
    engine_val.print_class_table(
        per_class, ("plain Dice@1", "followed"), f"{a.which}, {a.mode}, ratio {a.ratio:g}"
    )
    print(f"extra model runs per structure: mean {np.mean(clicks):.1f}, max {max(clicks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
