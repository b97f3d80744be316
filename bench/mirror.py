"""Benchmark (tried, not kept): test-time mirroring on held-out *validation* cases.

Each first click (``core.clicks.first_click``) is reconstructed twice: on the volume as it is
and on the volume mirrored along one array axis (same affine, the click mirrored with it;
the mirrored pass's probabilities flipped back). Prints Dice@1 of the plain pass, of the
mirrored pass alone and of their average, per class and as the mean of the class means (as
``sam3d eval`` aggregates). The mirror costs a second model pass per click.

    .venv/bin/python bench/mirror.py                                   # held-out hearts
    .venv/bin/python bench/mirror.py --which headneck --adapter headneck-ct [--mode slice]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def mirrored_click(click, axis: int, n: int):
    """``click`` on the volume mirrored along array ``axis`` (``n`` voxels long)."""
    if click.axis == axis:
        return replace(click, slice_idx=n - 1 - click.slice_idx)
    row_axis, col_axis = (a for a in range(3) if a != click.axis)
    if row_axis == axis:
        return replace(click, row=n - 1 - click.row)
    return replace(click, col=n - 1 - click.col)


def lr_axis(affine) -> int:
    """The array axis closest to world x (left-right)."""
    return int(np.argmax(np.abs(np.asarray(affine)[0, :3])))


def main(argv=None) -> int:
    import engine_val

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    engine_val.add_validation_args(ap)
    ap.add_argument("--mode", default="volume", choices=("volume", "slice"))
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "mirror_val")
    a = ap.parse_args(argv)

    from core.clicks import PromptSet
    from core.cube import paste_block
    from core.io import Volume
    from core.metrics import dice
    from core.paste import keep_prompted_components

    found = engine_val.structures(a, a.out)
    if found is None:
        return 0
    rec, structures = found

    def on_volume(res, shape):
        return paste_block(res.cube_probability, res.cube, res.affine, (0, 0, 0), shape)

    per_class: dict[int, list] = {}
    mirrored = None  # (image, its mirror): made once per case, for all its structures
    for case_id, image, k, gt, click in structures:
        ax = lr_axis(image.affine)
        if mirrored is None or mirrored[0] is not image:
            data = np.ascontiguousarray(np.flip(image.data, ax))
            mirrored = image, Volume(data, image.affine, image.path)
        flipped = mirrored[1]
        prompts = PromptSet((click,))
        plain = rec.predict(image, prompts, mode=a.mode, mesh=False)
        mirror = rec.predict(
            flipped,
            PromptSet((mirrored_click(click, ax, image.shape[ax]),)),
            mode=a.mode,
            mesh=False,
        )
        p_mirror = np.flip(on_volume(mirror, image.shape), ax)
        p_mean = (on_volume(plain, image.shape) + p_mirror) / 2
        row = [
            dice(plain.mask, gt),
            dice(keep_prompted_components(p_mirror > 0.5, prompts), gt),
            dice(keep_prompted_components(p_mean > 0.5, prompts), gt),
        ]
        per_class.setdefault(k, []).append(row)
        print(case_id, k, " ".join(f"{x:.3f}" for x in row), flush=True)
    columns = ("plain Dice@1", "mirrored", "average")
    engine_val.print_class_table(per_class, columns, f"{a.which}, {a.mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
