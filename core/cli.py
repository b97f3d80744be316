"""The ``sam3d`` command line.

Exit codes: 0 success; 1 the job could not process anything (bad input, every case failed);
2 wrong usage (argparse); 130 interrupted (finished work is kept, rerun to resume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import InputError

__all__ = ["main", "build_parser"]


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x != "")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc


def _float_pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from exc
    return lo, hi


class _Tqdm:
    """A ``progress(done, total, message)`` callback drawing a tqdm bar."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit="case", file=sys.stderr)
        self.bar.n = done
        self.bar.set_postfix_str(message[-40:], refresh=False)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------
# sam3d synth


def _add_synth(sub):
    p = sub.add_parser(
        "synth",
        help="generate synthetic cardiac CT phantoms (TotalSegmentator-heart layout)",
        description="Write N synthetic cardiac CT cases, 64^3 at 3 mm, labels 1 LA, 2 LV, "
        "3 RA, 4 RV, 5 myocardium, as <out>/<case>/<case>-image.nii.gz + -label.nii.gz.",
    )
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--cases", type=int, default=10, help="number of cases (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    from core.synthetic import write_heart_dataset

    if args.cases < 1:
        raise ValueError(f"--cases must be at least 1, got {args.cases}")
    bar = _Tqdm("synth")
    try:
        ids = write_heart_dataset(args.out, args.cases, seed=args.seed, progress=bar)
    finally:
        bar.close()
    print(f"synth: {len(ids)} cases in {args.out}")
    return 0


# --------------------------------------------------------------------------------------------
# sam3d preprocess


def _add_preprocess(sub):
    from core.datasets import LAYOUTS
    from core.intensity import MODALITIES
    from core.preprocess import SLICE_SAMPLINGS

    p = sub.add_parser(
        "preprocess",
        help="build the training/evaluation cache from a labelled dataset folder",
        description="Resample, normalise and slice a dataset (TotalSegmentator case folders, "
        "nnU-Net imagesTr/labelsTr, or flat volumes/labels) into a resumable cache. "
        "See docs/cache-format.md.",
    )
    p.add_argument("--original_nifti_dir", required=True, help="dataset folder (any layout)")
    p.add_argument("--out", "--out_dir", dest="out", required=True, help="cache folder")
    p.add_argument("--classes", type=int, required=True, help="number of classes K (labels 1..K)")
    p.add_argument("--extract_mesh", action="store_true", help="also write per-class .ply meshes")
    p.add_argument("--spacing", type=float, default=3.0, help="isotropic spacing, mm (default 3)")
    p.add_argument("--axes", type=_int_list, default=(0, 1, 2), help="slice axes (default 0,1,2)")
    p.add_argument("--slice_sampling", choices=SLICE_SAMPLINGS, default="uniform")
    p.add_argument("--slices_per_axis", type=int, default=8, help="for uniform/random_axis")
    p.add_argument("--modality", choices=MODALITIES, default="ct")
    p.add_argument("--ct_window", type=_float_pair, default=(-1000.0, 2000.0), metavar="LOW,HIGH")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="force a dataset layout")
    p.add_argument("--max_cases", type=int, default=None, help="only the first N cases")
    p.add_argument(
        "--overwrite", action="store_true", help="rebuild a cache made with other parameters"
    )
    p.set_defaults(func=_run_preprocess)


def _run_preprocess(args) -> int:
    from core.preprocess import PreprocessConfig, preprocess_dataset

    cfg = PreprocessConfig(
        input_dir=args.original_nifti_dir,
        out_dir=args.out,
        classes=args.classes,
        spacing=args.spacing,
        axes=args.axes,
        slice_sampling=args.slice_sampling,
        slices_per_axis=args.slices_per_axis,
        modality=args.modality,
        ct_window=args.ct_window,
        extract_mesh=args.extract_mesh,
        workers=args.workers,
        layout=args.layout,
    )
    bar = _Tqdm("preprocess")
    try:
        summary = preprocess_dataset(
            cfg, progress=bar, overwrite=args.overwrite, max_cases=args.max_cases
        )
    finally:
        bar.close()
    print(summary.report())
    return summary.exit_code()


# --------------------------------------------------------------------------------------------
# sam3d demo


def _add_demo(sub):
    p = sub.add_parser(
        "demo",
        help="the main job on built-in data: synthesise sample hearts and preprocess them",
    )
    p.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--cases", type=int, default=4, help="synthetic cases (default 4)")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from core.preprocess import PreprocessConfig, preprocess_dataset
    from core.synthetic import write_heart_dataset

    out = Path(args.out)
    data_dir, cache_dir = out / "synthetic_heart", out / "cache"
    bar = _Tqdm("synth")
    try:
        write_heart_dataset(data_dir, args.cases, seed=0, progress=bar)
    finally:
        bar.close()
    cfg = PreprocessConfig(
        input_dir=str(data_dir),
        out_dir=str(cache_dir),
        classes=5,
        extract_mesh=True,
        workers=args.workers,
    )
    bar = _Tqdm("preprocess")
    try:
        summary = preprocess_dataset(cfg, progress=bar)
    finally:
        bar.close()
    print(summary.report())
    print(f"demo: synthetic cardiac CT cases: {data_dir}")
    print(f"demo: preprocessed cache (slices, SDFs, meshes): {cache_dir}")
    return summary.exit_code()


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from core import __version__

    parser = argparse.ArgumentParser(
        prog="sam3d",
        description="sam3d-napari: click an organ on one slice, get it back in 3D.",
        epilog="Exit codes: 0 ok; 1 nothing could be processed (see the message); "
        "2 usage error; 130 interrupted (rerun to resume).",
    )
    parser.add_argument("--version", action="version", version=f"sam3d-napari {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_synth(sub)
    _add_preprocess(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"sam3d {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sam3d {args.command}: interrupted; finished work is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
