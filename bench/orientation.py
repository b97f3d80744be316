"""Benchmark: the engine on volumes stored in another axis order, with and without its
canonical frame (``core.orient``), on the shipped base's 16 held-out *validation* hearts.

Each heart is also stored permuted and flipped (slices first, two axes reversed: an order an
LPS file or another napari reader can hand the engine) and its first click is mapped onto
that array. Prints first-click Dice (mean over structures) for the RAS+ volume, for the
permuted volume as the engine saw it before ``core.orient`` (its own voxel axes), and as the
engine sees it now (mapped onto RAS+: the same voxels as the RAS+ volume).

    .venv/bin/python bench/orientation.py [--mode slice]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# slices first, then two flipped axes
ORNT = np.array([[2, -1], [0, 1], [1, -1]])


def main(argv=None) -> int:
    import engine_val
    import nibabel as nib

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="volume", choices=("volume", "slice"))
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "orientation_val")
    a = ap.parse_args(argv)

    from core.clicks import PromptSet, first_click
    from core.datasets import discover
    from core.engine import Reconstructor
    from core.io import Volume, load_pair
    from core.metrics import dice
    from core.orient import CanonicalFrame

    ns = argparse.Namespace(which="heart", checkpoint=None, adapter=None, run=None, data=None)
    root = engine_val.prepare(ns, a.out)
    rec = Reconstructor.from_pretrained()
    as_is = Reconstructor(rec.model)  # the same weights, seeing the array's own axes
    as_is.predict = lambda *args, **kw: _without_frame(Reconstructor.predict, as_is, args, kw)

    def reoriented(array, affine):
        img = nib.Nifti1Image(array, affine).as_reoriented(ORNT)
        return np.ascontiguousarray(img.dataobj), img.affine

    dices: dict[str, list[float]] = {"RAS+": [], "permuted, own axes": [], "permuted, now": []}
    for case in discover(str(root)).cases:
        image, label = load_pair(case.image, case.label)
        data, affine = reoriented(image.data, image.affine)
        odd = Volume(data.astype(np.float32), affine, "permuted")
        odd_label, _ = reoriented(label.data, label.affine)
        frame = CanonicalFrame.of(odd.affine, odd.shape)
        to_odd = frame.inverse()  # RAS+ -> the permuted array
        for k in label.present_labels():
            gt = label.data == k
            prompts = PromptSet((first_click(gt),))
            odd_prompts = to_odd.prompts(prompts)
            plain = rec.predict(image, prompts, mode=a.mode, mesh=False)
            dices["RAS+"].append(dice(plain.mask, gt))
            for name, engine in (("permuted, own axes", as_is), ("permuted, now", rec)):
                res = engine.predict(odd, odd_prompts, mode=a.mode, mesh=False)
                dices[name].append(dice(res.mask, odd_label == k))
    print(f"| volume as stored | first-click Dice ({a.mode}, {len(dices['RAS+'])} structures) |")
    print("| --- | --- |")
    for name, v in dices.items():
        print(f"| {name} | {np.mean(v):.3f} |")
    return 0


def _without_frame(predict, rec, args, kw):
    """``predict`` with the canonical frame switched off (the engine before core.orient)."""
    import core.engine

    keep = core.engine.CanonicalFrame
    core.engine.CanonicalFrame = _NoFrame
    try:
        return predict(rec, *args, **kw)
    finally:
        core.engine.CanonicalFrame = keep


class _NoFrame:
    @staticmethod
    def of(affine, shape):
        return None


if __name__ == "__main__":
    sys.exit(main())
