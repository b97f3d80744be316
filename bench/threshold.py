"""Benchmark: is 0.5 the right decision level for the model's occupancy probabilities?

    .venv/bin/python bench/threshold.py --which headneck --adapter headneck-ct
    .venv/bin/python bench/threshold.py --which heart

On held-out *validation* cases (never a test set; chosen as in ``bench/engine_val.py``), one
first click per case and class (the ``sam3d eval`` protocol), one engine pass per mode; the
final pass's cube probabilities are then turned into the mask at each level with the engine's
own paste-back (``core.paste.mask_on_volume``). Prints mean Dice per level over all
case-class pairs, as the mean of the class means (``sam3d eval``'s overall figure) and per
class. A level tuned here would be tuned on validation cases, never on the test sets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LEVELS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def main(argv=None) -> int:
    from engine_val import add_validation_args, prepare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_validation_args(ap)
    ap.add_argument("--modes", default="volume,slice")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "threshold")
    a = ap.parse_args(argv)

    from core.clicks import PromptSet, first_click
    from core.datasets import discover
    from core.engine import Reconstructor
    from core.io import load_pair
    from core.metrics import dice
    from core.paste import mask_on_volume

    root = prepare(a, a.out)
    if root is None:
        return 0
    levels = [float(x) for x in a.levels.split(",")]
    modes = a.modes.split(",")
    rec = Reconstructor.from_pretrained(a.checkpoint, a.adapter)
    scores: dict[tuple[str, int], list[list[float]]] = {}
    for case in discover(root).cases:
        image, label = load_pair(case.image, case.label)
        for k in label.present_labels():
            gt = label.data == k
            prompts = PromptSet((first_click(gt),))
            for mode in modes:
                r = rec.predict(image, prompts, mode=mode, mesh=False)
                row = [
                    dice(mask_on_volume(r.cube_probability, r.cube, image.affine, gt.shape,
                                        prompts, level), gt)
                    for level in levels
                ]  # fmt: skip
                scores.setdefault((mode, int(k)), []).append(row)
        print(f"{case.case_id} done", file=sys.stderr, flush=True)
    head = " | ".join(f"Dice@1 at {lv:g}" for lv in levels)
    print(f"| mode | class | n | {head} |")
    print("|" + " --- |" * (3 + len(levels)))
    for mode in modes:
        rows = {k: np.array(v) for (m, k), v in scores.items() if m == mode}
        every = np.concatenate(list(rows.values()))
        per_class = np.array([arr.mean(0) for arr in rows.values()])
        table = [("all pairs", len(every), every.mean(0)),
                 ("class mean", len(rows), per_class.mean(0)),
                 *((k, len(arr), arr.mean(0)) for k, arr in sorted(rows.items()))]  # fmt: skip
        for k, n, means in table:
            cells = " | ".join(f"{x:.3f}" for x in means)
            print(f"| {mode} | {k} | {n} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
