"""The ``sam3d`` command line.

Exit codes: 0 success; 1 the job could not process anything (bad input, every case failed);
2 wrong usage (argparse); 130 interrupted (finished work is kept, rerun to resume).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from core.cli_train import add_train
from core.errors import InputError
from core.intensity import MODALITIES
from core.modes import INDEX_ORDERS, MODES

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
    p.add_argument(
        "--kind",
        choices=("heart", "organs", "tubes"),
        default="heart",
        help="cardiac phantoms (default), varied organ-like shapes (organ_NNN), or such shapes "
        "with a thin tube through the whole volume as object 1 (tube_NNN)",
    )
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    from core.synthetic import write_heart_dataset, write_organ_dataset

    if args.cases < 1:
        raise ValueError(f"--cases must be at least 1, got {args.cases}")
    if args.kind == "heart":
        write = write_heart_dataset
    else:
        write = functools.partial(write_organ_dataset, crossing_tube=args.kind == "tubes")
    bar = _Tqdm("synth")
    try:
        ids = write(args.out, args.cases, seed=args.seed, progress=bar)
    finally:
        bar.close()
    print(f"synth: {len(ids)} cases in {args.out}")
    return 0


# --------------------------------------------------------------------------------------------
# sam3d preprocess


def _add_modality_arg(p, where: str) -> None:
    p.add_argument(
        "--modality",
        choices=MODALITIES,
        default=None,
        help=f"how intensities are scaled (default: what {where} declares, e.g. nnU-Net's "
        'channel_names {"0": "MRI"}; else ct)',
    )


def _add_ct_window_arg(p, default) -> None:
    p.add_argument(
        "--ct_window",
        type=_float_pair,
        default=default,
        metavar="LOW,HIGH",
        help=(
            "CT intensities: clip to LOW..HIGH HU, map to 0..1 (default -1000,2000)"
            if default
            else "CT intensities: clip to LOW..HIGH HU (default: the window the adapter was "
            "trained with, recorded in its metadata; else -1000,2000)"
        ),
    )


def _add_preprocess(sub):
    from core.datasets import LAYOUTS
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
    _add_modality_arg(p, "the dataset's dataset.json")
    _add_ct_window_arg(p, (-1000.0, 2000.0))
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


def _add_weights_args(p) -> None:
    """--checkpoint and --adapter, as every model command takes them."""
    p.add_argument("--checkpoint", default=None, help="base weights (default: shipped)")
    p.add_argument("--adapter", default=None, help="shipped adapter name or adapter folder")


def _add_zoom_in_arg(p) -> None:
    p.add_argument(
        "--zoom_in",
        action="store_true",
        help="volume mode: look again at a finer scale when the organ fills less than 30 %% "
        "of the first cube (helps compact organs such as heart chambers, hurts thin tubes "
        "such as the spinal cord; BENCHMARKS.md)",
    )


# --------------------------------------------------------------------------------------------
# sam3d demo


def _add_demo(sub):
    p = sub.add_parser(
        "demo",
        help="the main job on built-in data: click a synthetic heart, get the organ in 3D",
        description="Make a synthetic cardiac CT the model never saw, click the left ventricle "
        "on the axial slice through its centre, reconstruct it in 3D with the shipped "
        "weights, and write mask.nii.gz, mesh.glb/.ply, preview.png and timings.json, with "
        "the Dice against the phantom's ground truth.",
    )
    p.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--mode", choices=MODES, default="volume")
    p.add_argument("--checkpoint", default=None, help="base weights (default: shipped)")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from core.predict import run_demo
    from core.weights import shipped_base_path

    if args.checkpoint is None and not shipped_base_path().is_file():
        return _data_demo(args)
    res = run_demo(args.out, mode=args.mode, checkpoint=args.checkpoint)
    c = res["click"]
    print(
        f"demo: clicked the {res['structure']} at (row {c.row:g}, col {c.col:g}) on axial "
        f"slice {c.slice_idx}"
    )
    print(
        f"demo: Dice against the ground truth {res['dice']:.3f}, "
        f"{res['timings']['total']:.0f} ms on this machine"
    )
    for name, path in res["paths"].items():
        print(f"demo: {name}: {path}")
    return 0


def _data_demo(args) -> int:
    """Without shipped weights (a checkout that has not trained them yet): the data engine's
    part of the demo, synthetic hearts preprocessed into a cache."""
    from core.preprocess import PreprocessConfig, preprocess_dataset
    from core.synthetic import write_heart_dataset
    from core.weights import shipped_base_path

    print(
        f"demo: no shipped weights at {shipped_base_path()} (train them with "
        "scripts/train_base.sh); running the data part only",
        file=sys.stderr,
    )
    out = Path(args.out)
    write_heart_dataset(out / "synthetic_heart", 4, seed=0)
    summary = preprocess_dataset(
        PreprocessConfig(
            input_dir=str(out / "synthetic_heart"),
            out_dir=str(out / "cache"),
            classes=5,
            extract_mesh=True,
        )
    )
    print(summary.report())
    return summary.exit_code()


# --------------------------------------------------------------------------------------------
# sam3d predict


def _add_predict(sub):
    p = sub.add_parser(
        "predict",
        help="reconstruct a structure in 3D from clicks on one slice of a NIfTI volume",
        description="Clicks are ROW,COL pixels of the slice np.take(volume, SLICE, axis=AXIS) "
        "of the volume in canonical RAS orientation (axis 2 = axial). Writes mask.nii.gz "
        "(the input's grid and affine), mesh.glb and mesh.ply, preview.png and timings.json. "
        "Mesh vertices are world mm of the input's NIfTI affine, RAS+ (+x right, +y anterior, "
        "+z superior), in both files: the .ply says SPACE=RAS for 3D Slicer; the .glb keeps "
        "these numbers, not glTF's metres and +Y up.",
    )
    p.add_argument("--volume", required=True, help="input .nii/.nii.gz")
    p.add_argument("--axis", type=int, choices=(0, 1, 2), default=2)
    p.add_argument("--slice", type=int, required=True, dest="slice_idx")
    p.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="ROW,COL",
        help="a positive click (repeatable)",
    )
    p.add_argument(
        "--negative",
        action="append",
        default=[],
        metavar="ROW,COL",
        help="a negative click (repeatable)",
    )
    p.add_argument(
        "--indices",
        choices=INDEX_ORDERS,
        default="ras",
        help="what --axis, --slice and ROW,COL index: ras = the volume turned to RAS+ (default; "
        "for a RAS file its own order), file = the file's own array order (the voxel indices "
        "3D Slicer, ITK-SNAP and nibabel show)",
    )
    p.add_argument("--mode", choices=MODES, default="volume")
    _add_modality_arg(p, "the dataset.json of the folder above the volume's (e.g. imagesTr/)")
    _add_ct_window_arg(p, None)
    _add_weights_args(p)
    _add_zoom_in_arg(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_run_predict)


def _run_predict(args) -> int:
    from core.predict import parse_point, predict_to_folder

    paths = predict_to_folder(
        args.volume,
        axis=args.axis,
        slice_idx=args.slice_idx,
        points=[parse_point(t) for t in args.point],
        negatives=[parse_point(t) for t in args.negative],
        out_dir=args.out,
        mode=args.mode,
        checkpoint=args.checkpoint,
        adapter=args.adapter,
        modality=args.modality,
        ct_window=args.ct_window,
        zoom_in=args.zoom_in,
        indices=args.indices,
        on_warning=lambda text: print(f"sam3d predict: warning: {text}", file=sys.stderr),
    )
    for name, path in paths.items():
        print(f"predict: {name}: {path}")
    if "mesh_glb" not in paths:
        print("predict: mesh: none (the mask is empty, or too small for a surface)")
    return 0


# --------------------------------------------------------------------------------------------
# sam3d eval


def _add_eval(sub):
    p = sub.add_parser(
        "eval",
        help="the click protocol on a labelled dataset: model vs baselines, metrics.json",
        description="For each case and labelled class: first click at the interior point "
        "farthest from the boundary on the axial slice through the class centroid, each "
        "further click at the centre of the largest remaining 3D error. Deterministic.",
    )
    p.add_argument("--data_root", required=True, help="dataset folder (any layout)")
    p.add_argument("--output_dir", required=True)
    _add_weights_args(p)
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--mode", choices=MODES, default="volume")
    p.add_argument("--max_cases", type=int, default=None)
    p.add_argument("--classes", type=_int_list, default=None, help="e.g. 1,2,3 (default: all)")
    p.add_argument("--layout", choices=("totalseg", "nnunet", "flat"), default=None)
    _add_modality_arg(p, "the dataset's dataset.json")
    _add_ct_window_arg(p, None)
    p.add_argument("--no_baselines", action="store_true", help="skip the classical baselines")
    p.add_argument("--save_viz", action="store_true", help="overlays, comparison grids, meshes")
    _add_zoom_in_arg(p)
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from core.evaluate import EvalConfig, evaluate, summary_table

    cfg = EvalConfig(
        data_root=args.data_root,
        output_dir=args.output_dir,
        checkpoint=args.checkpoint,
        adapter=args.adapter,
        clicks=args.clicks,
        mode=args.mode,
        max_cases=args.max_cases,
        classes=args.classes,
        layout=args.layout,
        modality=args.modality,
        ct_window=args.ct_window,
        baselines=not args.no_baselines,
        save_viz=args.save_viz,
    )
    from core.engine import CubePolicy

    bar = _Tqdm("eval")
    try:
        report = evaluate(cfg, progress=bar, policy=CubePolicy(zoom_in=args.zoom_in))
    finally:
        bar.close()
    evaluated = report["aggregate"]["n_structures"] > 0
    if evaluated:
        print(summary_table(report))
    failed = report["failed_cases"]
    for cid, msg in failed.items():
        print(f"  failed: {cid}: {msg}")
    for line in report["dataset_problems"]:
        print(f"  dataset: {line}")
    for cid, notes in report["warnings"].items():
        for note in notes:
            print(f"sam3d eval: warning: {cid}: {note}", file=sys.stderr)
    seen = list(report["seen_in_training"].values())
    if seen:
        print(
            f"sam3d eval: warning: the weights saw {len(seen)} of the {report['n_cases']} "
            f"case(s) in training ({seen.count('train')} trained on, {seen.count('val')} "
            "validation); the aggregate includes them (metrics.json: seen_in_training)",
            file=sys.stderr,
        )
    if not evaluated:
        n = report["n_cases"]
        if len(failed) == n:
            why = f"all {n} case(s) failed"
        else:
            of = f" of class {','.join(map(str, cfg.classes))}" if cfg.classes else ""
            why = f"no labelled structure{of} in the {n - len(failed)} case(s) read"
        raise InputError(args.data_root, f"nothing could be evaluated ({why})")
    print(
        f"eval: aggregate Dice after {cfg.clicks} click(s) {report['aggregate']['dice']:.3f}; "
        f"{args.output_dir}/metrics.json"
    )
    return 0


# --------------------------------------------------------------------------------------------
# sam3d app


def _add_app(sub):
    p = sub.add_parser(
        "app",
        help="the Gradio web demo: upload a volume or use the sample, click an organ",
        description="Serve the web demo (gradio_app): load a NIfTI volume or the synthetic "
        "heart, click an organ on a slice, get its 3D surface, mask and metrics; also a "
        "programmatic endpoint, api_name='reconstruct', for gradio_client. The model is "
        "loaded once at start. Needs the gradio extra: pip install 'sam3d-napari[gradio]'.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    _add_weights_args(p)
    p.add_argument("--max-file-size", default="512mb", help="upload size limit (default 512mb)")
    p.add_argument(
        "--concurrency", type=int, default=2, help="model requests processed at once (default 2)"
    )
    p.set_defaults(func=_run_app)


def _run_app(args) -> int:
    import importlib.util

    # gradio is an optional extra: core must work (and this command fail clearly) without it.
    if importlib.util.find_spec("gradio") is None:
        print(
            "sam3d app: error: gradio is not installed; install the extra with "
            "pip install 'sam3d-napari[gradio]'",
            file=sys.stderr,
        )
        return 1
    from gradio_app.app import launch

    try:
        launch(
            args.host,
            args.port,
            args.share,
            checkpoint=args.checkpoint,
            adapter=args.adapter,
            max_file_size=args.max_file_size,
            concurrency=args.concurrency,
        )
    except OSError as exc:  # port taken, address not available
        print(f"sam3d app: error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


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
    _add_predict(sub)
    _add_eval(sub)
    _add_synth(sub)
    _add_preprocess(sub)
    add_train(sub)
    _add_app(sub)
    return parser


#: Options whose value may start with "-" without being a plain number (argparse would take
#: ``--ct_window -1000,2000`` for two options and refuse it).
_NEGATIVE_VALUE_OPTIONS = ("--ct_window",)


def _attach_negative_values(argv: list[str]) -> list[str]:
    """``--ct_window -1000,2000`` as ``--ct_window=-1000,2000``, the form argparse accepts."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if (
            arg in _NEGATIVE_VALUE_OPTIONS
            and len(nxt) > 1
            and nxt[0] == "-"
            and nxt[1] in "0123456789."
        ):
            out.append(f"{arg}={nxt}")
            i += 2
        else:
            out.append(arg)
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _attach_negative_values(sys.argv[1:] if argv is None else list(argv))
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":  # overrides after a flag too: a=1 --epochs 2 b=2
        more = [a for a in extra if "=" in a and not a.startswith("-")]
        args.overrides += more
        extra = [a for a in extra if a not in more]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
