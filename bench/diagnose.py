"""Benchmark: what limits first-click accuracy, on *validation* cases (never the test sets).

    # the base's held-out hearts (the val split of a base training run), volume mode
    .venv/bin/python bench/diagnose.py --mode volume
    # the adapter's held-out openkbp_train cases (never openkbp_val)
    .venv/bin/python bench/diagnose.py --which headneck --adapter headneck-ct --mode slice

For each structure, one first click (the ``sam3d eval`` protocol), then:

- predicted / true volume, recall, and where the false positives lie (share of the structure's
  own volume falling on each other label);
- the share of the true structure inside the (last) cube the model saw, and the model passes
  (zoom-outs): whether the cube policy, rather than the model, cuts a long organ short;
- Dice of the mask at probability thresholds 0.3-0.7 (the engine uses 0.5);
- Dice of the 2D head's mask on the clicked slice;
- Dice with the true 2D mask of the clicked slice given as a mask+point prompt (an upper bound
  for mask prompting) and with the 2D head's own mask as that prompt;
- Dice after trimming by intensity: a robust Gaussian fitted inside the 2D head's mask and one
  in a ring around it; 3D voxels more like the ring are dropped, unless the two overlap
  (means closer than ``--sep`` standard deviations). Not part of the engine (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from core.metrics import dice  # noqa: E402  (after the path insert above)

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def trim_by_intensity(smooth, mask, slice_mask, slice_img, prompts, sep: float):
    """``mask`` without the voxels whose (smoothed) intensity is more like the ring around the
    2D mask than its inside; ``mask`` itself when the two intensity models overlap."""
    from scipy import ndimage as ndi

    from core.paste import keep_prompted_components

    inner = ndi.binary_erosion(slice_mask)
    inner = inner if inner.sum() >= 5 else slice_mask
    ring = ndi.binary_dilation(slice_mask, iterations=3) & ~ndi.binary_dilation(slice_mask)
    if inner.sum() < 3 or ring.sum() < 3:
        return mask

    def robust(v):
        med = float(np.median(v))
        return med, 1.4826 * float(np.median(np.abs(v - med))) + 1.0

    (mf, sf), (mb, sb) = robust(slice_img[inner]), robust(slice_img[ring])
    if abs(mf - mb) < sep * max(sf, sb):
        return mask
    like_fg = -0.5 * ((smooth - mf) / sf) ** 2 - np.log(sf)
    like_bg = -0.5 * ((smooth - mb) / sb) ** 2 - np.log(sb)
    return keep_prompted_components(mask & (like_fg >= like_bg), prompts)


def main(argv=None) -> int:
    from engine_val import add_validation_args, prepare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_validation_args(ap)
    ap.add_argument("--mode", choices=("volume", "slice"), default="volume")
    ap.add_argument("--sep", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "diagnose")
    a = ap.parse_args(argv)

    from scipy import ndimage as ndi

    from core.clicks import PromptSet, first_click
    from core.cube import paste_from_cube
    from core.datasets import discover
    from core.engine import Reconstructor
    from core.geometry import take_slice
    from core.io import load_pair
    from core.paste import keep_prompted_components

    root = prepare(a, a.out)
    if root is None:
        return 0
    rec = Reconstructor.from_pretrained(a.checkpoint, a.adapter)

    rows: dict[int, list] = {}
    n_labels = 0
    for case in discover(root).cases:
        image, label = load_pair(case.image, case.label)
        n_labels = max(n_labels, int(label.data.max()) + 1)
        smooth = ndi.gaussian_filter(image.data.astype(np.float32), 0.7)
        for k in label.present_labels():
            gt = label.data == k
            click = first_click(gt)
            prompts = PromptSet((click,))
            r = rec.predict(image, prompts, mode=a.mode, mesh=False)
            axis, s = r.reference_slice
            gt2 = take_slice(gt, axis, s)
            prob = paste_from_cube(r.cube_probability, r.cube, image.shape, image.affine, order=1)
            by_t = [dice(keep_prompted_components(prob > t, prompts), gt) for t in THRESHOLDS]
            oracle = rec.predict(image, PromptSet((click,), mask=(axis, s, gt2)), mode=a.mode,
                                 mesh=False)  # fmt: skip
            own = rec.predict(image, PromptSet((click,), mask=(axis, s, r.slice_mask)),
                              mode=a.mode, mesh=False)  # fmt: skip
            trimmed = trim_by_intensity(smooth, r.mask, r.slice_mask, take_slice(smooth, axis, s),
                                        prompts, a.sep)  # fmt: skip
            fp = np.bincount(label.data[r.mask & ~gt].ravel(), minlength=256) / gt.sum()
            ones = np.ones(r.cube_probability.shape, np.float32)
            seen = paste_from_cube(ones, r.cube, image.shape, image.affine, order=0) > 0.5
            rows.setdefault(k, []).append(
                {
                    "dice": dice(r.mask, gt),
                    "ratio": r.mask.sum() / gt.sum(),
                    "recall": (r.mask & gt).sum() / gt.sum(),
                    "in_cube": (gt & seen).sum() / gt.sum(),
                    "passes": r.passes,
                    "fp": fp,
                    "by_t": by_t,
                    "head2d": dice(r.slice_mask, gt2),
                    "oracle_mask": dice(oracle.mask, gt),
                    "own_mask": dice(own.mask, gt),
                    "trimmed": dice(trimmed, gt),
                }
            )

    def mean(key, rs):
        return np.mean([x[key] for x in rs], axis=0)

    every = [x for rs in rows.values() for x in rs]
    print(f"{a.which}, {a.mode} mode, weights {rec.name}, {len(every)} structures, first click")
    print("| structure | Dice | volume ratio | recall | true volume in cube | model passes | "
          "FP on labels (share of own volume) | "
          + " | ".join(f"t={t}" for t in THRESHOLDS)
          + " | 2D head on slice | true mask+point | own mask+point | trimmed |")  # fmt: skip
    print("| --- " * (12 + len(THRESHOLDS)) + "|")
    for k, rs in [*sorted(rows.items()), ("all", every)]:
        fp = mean("fp", rs)[:n_labels]
        fp_txt = " ".join(f"{i}:{v:.2f}" for i, v in enumerate(fp) if v >= 0.01) or "-"
        print(
            f"| {k} | {mean('dice', rs):.3f} | {mean('ratio', rs):.2f} | {mean('recall', rs):.2f} | "
            f"{mean('in_cube', rs):.2f} | {mean('passes', rs):.2f} | {fp_txt} | " + " | ".join(f"{v:.3f}" for v in mean("by_t", rs))
            + f" | {mean('head2d', rs):.3f} | {mean('oracle_mask', rs):.3f} | "
            f"{mean('own_mask', rs):.3f} | {mean('trimmed', rs):.3f} |"
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
