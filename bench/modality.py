"""Benchmark: the shipped base on MR and on 8-bit volumes, by intensity rule.

The base was trained on synthetic CT only. Two questions:

1. Real MR and CT (``../shared/data/totalseg_examples``: two abdominal CTs, one abdominal
   MR): first-click Dice (volume mode) over every organ of at least 300 voxels, per case and
   rule: ``ct`` (the HU window, CT cases only), ``mr`` (the 0.5th..99.5th percentiles to
   [0, 0.5], ``core.intensity``) and ``mr-zscore``, the MR rule before (a z-score over the
   body clipped to [-5, 5]), kept here only as the reference.
2. The 20 synthetic test hearts (seed 1000, never used in training) exported as 8-bit greys
   (the 0.5th..99.5th HU percentiles to 0..255): first-click Dice over the five classes from
   their HU as CT, from 8-bit as CT (which now warns) and from 8-bit as MR; and how often the
   warning fires on each.

    .venv/bin/python bench/modality.py [--mode slice] [--per_organ]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MIN_VOXELS = 300


def zscore(data, modality, *, ct_window=None):
    """The MR rule before percentiles (reference only)."""
    x = np.asarray(data, dtype=np.float32)
    floor = np.percentile(x, 1.0)
    body = x[x > floor]
    if body.size < 10:
        body = x.ravel()
    return np.clip((x - body.mean()) / max(float(body.std()), 1e-6), -5, 5).astype(np.float32)


def _predict(rec, image, clicks, labels, rule, mode):
    """Mean first-click Dice with one rule; a fresh array so no cached normalisation is used."""
    import core.engine
    from core.clicks import PromptSet
    from core.io import Volume
    from core.metrics import dice

    modality = "mr" if rule == "mr-zscore" else rule
    vol = Volume(np.array(image.data), image.affine, image.path)
    saved = core.engine.normalize_intensity
    if rule == "mr-zscore":
        core.engine.normalize_intensity = zscore
    try:
        out, warned = {}, 0
        for k, click in clicks.items():
            r = rec.predict(vol, PromptSet((click,)), mode=mode, modality=modality, mesh=False)
            out[k] = float(dice(r.mask, labels == k))
            warned = max(warned, len(r.warnings))
    finally:
        core.engine.normalize_intensity = saved
    return out, warned


def real_cases(rec, mode, per_organ):
    from core.clicks import first_click
    from core.io import load_pair

    root = REPO.parent / "shared" / "data" / "totalseg_examples"
    if not root.is_dir():
        print(f"skipping real cases: {root} is absent")
        return
    names = json.loads((root / "label_names.json").read_text())
    print(f"\n### Real CT and MR ({mode} mode, first click, organs of >= {MIN_VOXELS} voxels)\n")
    print("| case | organs | ct | mr (percentiles, now) | mr-zscore (before) |")
    print("| --- | --- | --- | --- | --- |")
    for case in sorted(names):
        img, lab = load_pair(
            root / "volumes" / f"{case}.nii.gz", root / "labels" / f"{case}.nii.gz"
        )
        ids, counts = np.unique(lab.data[lab.data > 0], return_counts=True)
        clicks = {
            int(k): first_click(lab.data == k)
            for k, n in zip(ids, counts, strict=True)
            if n >= MIN_VOXELS
        }
        rules = (["ct"] if "_ct_" in case else []) + ["mr", "mr-zscore"]
        res = {r: _predict(rec, img, clicks, lab.data, r, mode)[0] for r in rules}
        cell = {r: f"{np.mean(list(res[r].values())):.3f}" for r in rules}
        print(
            f"| {case} | {len(clicks)} | {cell.get('ct', '-')} | {cell['mr']} | {cell['mr-zscore']} |"
        )
        if per_organ:
            for k in clicks:
                row = ", ".join(f"{r} {res[r][k]:.3f}" for r in rules)
                print(f"|   {names[case].get(str(k), k)} | | {row} | | |")


def eight_bit_hearts(rec, mode):
    from core.clicks import first_click
    from core.datasets import discover
    from core.io import Volume, load_pair
    from core.synthetic import write_heart_dataset

    with tempfile.TemporaryDirectory() as tmp:
        write_heart_dataset(Path(tmp), 20, seed=1000)
        cases = discover(tmp).cases
        rows = {"HU as ct": [], "8-bit as ct": [], "8-bit as mr": []}
        warned = dict.fromkeys(rows, 0)
        for case in cases:
            img, lab = load_pair(case.image, case.label)
            lo, hi = np.percentile(img.data, [0.5, 99.5])
            u8 = (np.clip((img.data - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
            u8 = Volume(u8, img.affine, img.path)
            clicks = {int(k): first_click(lab.data == k) for k in lab.present_labels()}
            for name, vol, rule in (
                ("HU as ct", img, "ct"),
                ("8-bit as ct", u8, "ct"),
                ("8-bit as mr", u8, "mr"),
            ):
                d, w = _predict(rec, vol, clicks, lab.data, rule, mode)
                rows[name] += list(d.values())
                warned[name] += w
    print(f"\n### The 20 test hearts as 8-bit greys ({mode} mode, first click, 5 classes)\n")
    print("| input | mean Dice | cases warned |")
    print("| --- | --- | --- |")
    for name, v in rows.items():
        print(f"| {name} | {np.mean(v):.3f} | {warned[name]} / {len(cases)} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="volume", choices=("volume", "slice"))
    ap.add_argument("--per_organ", action="store_true")
    a = ap.parse_args(argv)
    from core.engine import Reconstructor

    rec = Reconstructor.from_pretrained()
    real_cases(rec, a.mode, a.per_organ)
    eight_bit_hearts(rec, a.mode)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
