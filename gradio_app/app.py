"""The Gradio page: components wired to :mod:`gradio_app.handlers`.

    from gradio_app.app import build_app, launch
    launch(host="127.0.0.1", port=7860)            # loads the model once, then serves

:func:`build_app` takes an already loaded engine and builds the ``gr.Blocks``; nothing here
loads weights at import time. Each browser tab has its own :class:`~gradio_app.session.Session`
in a ``gr.State``; its files are removed when the tab closes (``demo.unload``) or when gradio
drops the state. All model work goes through one queue group (``concurrency_id="model"``) with
a concurrency limit, and the upload size is limited at launch.
"""

import signal
import threading
import time

import gradio as gr
from gradio import FileData

from core.errors import InputError
from gradio_app import handlers as H
from gradio_app.api import reconstruct_file
from gradio_app.events import AppFiles, close_session, guard, one_at_a_time
from gradio_app.render import AXIS_NAMES
from gradio_app.service import SharedEngine
from gradio_app.session import Settings

__all__ = ["build_app", "launch", "close_app", "DEFAULT_MAX_FILE_SIZE"]

DEFAULT_MAX_FILE_SIZE = "512mb"

CSS = """
#slice-image img { cursor: crosshair; image-rendering: pixelated; }
#status { min-height: 3em; }
"""

INTRO = """\
# sam3d: click an organ on one slice, get it back in 3D
Load a NIfTI volume (optionally with its ground-truth labels) or the synthetic heart sample,
pick a slice, and **click the organ**. Each click reconstructs it: its surface in 3D, the mask
on three orthogonal slices, and the time taken. More clicks refine it (negative points or a box
with the *Click adds* choice); *New object* starts another structure. Downloads: the mask as
`.nii.gz` on the input's grid, and the meshes as `.glb` and `.ply` (world mm, RAS).
"""


def build_app(
    engine,
    *,
    concurrency: int = 2,
    max_queue: int = 64,
    sample_seed: int | None = None,
) -> gr.Blocks:
    """The page, over an already loaded engine.

    Parameters
    ----------
    engine : core.engine.Reconstructor, or a :class:`~gradio_app.service.SharedEngine`
    concurrency : model requests (clicks, API calls) processed at once; the model itself is
        used by one at a time (see :mod:`gradio_app.service`), the rest overlap its I/O
    max_queue : requests waiting at most; more are refused with "queue full"
    sample_seed : the synthetic sample's default seed (None: the demo's)

    Returns
    -------
    gr.Blocks, queued; ``close_app(demo)`` closes it and removes its temporary files.
    """
    from core.predict import DEMO_SEED

    if not isinstance(engine, SharedEngine):
        engine = SharedEngine(engine)
    files = AppFiles()
    seed0 = DEMO_SEED if sample_seed is None else int(sample_seed)

    with gr.Blocks(
        title="sam3d: organ in 3D from one click",
        analytics_enabled=False,
        delete_cache=(900, 3600),
    ) as demo:
        state = gr.State(None, delete_callback=close_session)
        gr.Markdown(INTRO)
        with gr.Row(equal_height=True):
            volume_file = gr.File(
                label="Volume (.nii / .nii.gz)",
                type="filepath",
                height=120,
                elem_id="volume-file",
                scale=2,
            )
            label_file = gr.File(
                label="Ground-truth labels (optional)",
                type="filepath",
                height=120,
                elem_id="label-file",
                scale=2,
            )
            with gr.Column(scale=1, min_width=220):
                seed = gr.Number(seed0, precision=0, minimum=0, label="Sample seed")
                sample_btn = gr.Button(
                    "Load synthetic heart sample", variant="primary", elem_id="load-sample"
                )
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260):
                axis = gr.Radio(
                    [(f"{n} ({i})", i) for i, n in enumerate(AXIS_NAMES)],
                    value=2,
                    label="Slice axis",
                    elem_id="axis",
                )
                slider = gr.Slider(0, 1, value=0, step=1, label="Slice", elem_id="slice-slider")
                tool = gr.Radio(
                    [
                        ("positive point", "positive"),
                        ("negative point", "negative"),
                        ("box (2 clicks)", "box"),
                    ],
                    value="positive",
                    label="Click adds",
                    elem_id="tool",
                )
                mode = gr.Radio(
                    list(H.MODES),
                    value="volume",
                    label="Mode",
                    info="volume: the model sees the 3D volume; slice: only the clicked slice",
                    elem_id="mode",
                )
                weights = gr.Dropdown(
                    list(engine.choices), value=engine.default, label="Weights", elem_id="weights"
                )
                modality = gr.Radio(
                    list(H.MODALITIES), value="ct", label="Modality", elem_id="modality"
                )
                zoom = gr.Checkbox(
                    False,
                    label="Zoom in on small compact organs (volume mode)",
                    info="helps heart chambers, hurts thin tubes such as the spinal cord",
                    elem_id="zoom-in",
                )
                with gr.Row():
                    undo_btn = gr.Button("Undo", size="sm", elem_id="undo")
                    new_btn = gr.Button("New object", size="sm", elem_id="new-object")
                    clear_btn = gr.Button("Clear", size="sm", elem_id="clear")
            with gr.Column(scale=2, min_width=360):
                slice_img = _picture(
                    "Slice: click the organ", "slice-image", buttons=["fullscreen"]
                )
                status = gr.Markdown(H.START_STATUS, elem_id="status")
            with gr.Column(scale=2, min_width=360):
                view3d = _scene("3D surface (prediction)", "view-3d", height=360)
                views = _picture("Mask on three orthogonal slices", "ortho-views")
        with gr.Column(visible=False, elem_id="gt-panel") as gt_panel:
            metrics = gr.Dataframe(
                headers=list(H.METRIC_COLUMNS),
                interactive=False,
                label="Ground truth vs prediction: metrics (distances in mm)",
                elem_id="metrics",
            )
            with gr.Row(equal_height=True):
                compare = _picture(
                    "2D: ground truth | prediction | errors", "compare-2d", height=420
                )
                pred3d = _scene("3D: prediction", "pred-3d", height=420)
                gt3d = _scene("3D: ground truth", "gt-3d", height=420)
        downloads = gr.File(
            label="Downloads: mask (.nii.gz on the input's grid), meshes (.glb, .ply: world mm)",
            file_count="multiple",
            interactive=False,
            elem_id="downloads",
        )

        full = [
            state,
            slice_img,
            axis,
            slider,
            view3d,
            views,
            status,
            gt_panel,
            metrics,
            compare,
            pred3d,
            gt3d,
            downloads,
        ]

        def show(session, view):
            if view is None:
                return [session] + [gr.skip()] * (len(full) - 1)
            return [
                session,
                view.slice_image,
                view.axis,
                _slice_slider(view.n_slices, view.slice_idx),
                view.scene,
                view.views,
                view.status,
                gr.Column(visible=view.has_gt),
                _table(view.metrics),
                view.compare,
                _same_scale(view.scene if view.has_gt else None, view.camera_mm),
                _same_scale(view.gt_scene, view.camera_mm),
                view.downloads or None,
            ]

        def settings_of(m, w, mod, z):
            return Settings(mode=m, weights=w, modality=mod, zoom_in=bool(z))

        @guard
        @one_at_a_time
        def on_sample(session, seed_value, request: gr.Request):
            session, view = H.load_sample(session, seed_value, root=files.root)
            files.register(session, request)
            return show(session, view)

        @guard
        @one_at_a_time
        def on_volume(session, volume_path, label_path, request: gr.Request):
            if volume_path is None:
                return show(session, None)
            session, view = H.load_volume(session, volume_path, label_path, root=files.root)
            files.register(session, request)
            return show(session, view)

        @guard
        @one_at_a_time
        def on_volume_clear(session):
            return show(*H.unload_volume(session))

        @guard
        @one_at_a_time
        def on_labels(session, label_path):
            if session is None or session.volume is None:
                if label_path is None:
                    return show(session, None)
            return show(*H.load_labels(session, label_path))

        @guard
        def on_axis(session, axis_value):
            session, view = H.set_axis(session, axis_value)
            return session, view.slice_image, _slice_slider(view.n_slices, view.slice_idx)

        @guard
        def on_slice(session, idx):
            if session is None or session.volume is None:
                return session, gr.skip()
            session, view = H.show_slice(session, idx)
            return session, view.slice_image

        @guard
        @one_at_a_time
        def on_click(session, tool_value, m, w, mod, z, evt: gr.SelectData):
            x, y = evt.index[0], evt.index[1]
            session, view = H.click(
                session, engine, x, y, tool=tool_value, settings=settings_of(m, w, mod, z)
            )
            return show(session, view)

        @guard
        @one_at_a_time
        def on_settings(session, m, w, mod, z):
            return show(*H.change_settings(session, engine, settings_of(m, w, mod, z)))

        @guard
        @one_at_a_time
        def on_undo(session, m, w, mod, z):
            return show(*H.undo(session, engine, settings_of(m, w, mod, z)))

        @guard
        @one_at_a_time
        def on_new(session):
            return show(*H.new_object(session))

        @guard
        @one_at_a_time
        def on_clear(session):
            return show(*H.clear(session))

        def on_unload(request: gr.Request):
            files.end_session(getattr(request, "session_hash", None))

        private = {"api_visibility": "private"}
        model = {
            **private,
            "concurrency_id": "model",
            "concurrency_limit": concurrency,
            "show_progress": "minimal",
        }
        # the upload boxes show what is loaded: the sample empties them, and a failed upload
        # leaves them as they were before it (not showing a file that was not loaded)
        boxes = {
            "fn": H.upload_boxes,
            "inputs": [state],
            "outputs": [volume_file, label_file],
            "show_progress": "hidden",
            **private,
        }
        sample_btn.click(on_sample, [state, seed], full, **model).success(**boxes)
        volume_file.upload(on_volume, [state, volume_file, label_file], full, **model).failure(
            **boxes
        )
        # the X on the volume box unloads it (and empties the label box: its labels went too)
        volume_file.clear(on_volume_clear, [state], full, **model).success(**boxes)
        label_file.upload(on_labels, [state, label_file], full, **model).failure(**boxes)
        label_file.clear(on_labels, [state, label_file], full, **model)
        axis.input(
            on_axis, [state, axis], [state, slice_img, slider], **private, show_progress="hidden"
        )
        slider.input(
            on_slice,
            [state, slider],
            [state, slice_img],
            **private,
            show_progress="hidden",
            trigger_mode="always_last",
        )
        slice_img.select(on_click, [state, tool, mode, weights, modality, zoom], full, **model)
        for comp in (mode, weights, modality, zoom):
            comp.input(on_settings, [state, mode, weights, modality, zoom], full, **model)
        undo_btn.click(on_undo, [state, mode, weights, modality, zoom], full, **model)
        new_btn.click(on_new, [state], full, **model)
        clear_btn.click(on_clear, [state], full, **model)
        demo.unload(on_unload)

        @guard
        def reconstruct(
            volume: FileData,
            axis: int,
            slice_index: int,
            points: list[list[float]],
            negative_points: list[list[float]] | None = None,
            mode: str = "volume",
            adapter: str = "base",
            modality: str = "ct",
            zoom_in: bool = False,
            indices: str = "ras",
        ) -> tuple[FileData, FileData | None, dict]:
            """Reconstruct an organ from clicks on one slice of a NIfTI volume.

            points / negative_points are [row, col] pixels of np.take(volume, slice_index, axis)
            in canonical RAS orientation (axis 2 = axial), or with indices="file" of the file's
            own array (the voxel indices 3D Slicer and ITK-SNAP show). mode, modality and
            indices are taken in any case ("CT" is "ct"). zoom_in turns on the engine's
            optional zoom-in on small compact organs (volume mode). Returns the mask (.nii.gz
            on the input's grid and affine), the mesh (.glb, world mm; None if nothing was
            found) and a dict with the timings (ms) and details.
            """
            path, name = _upload_path(volume)
            out = reconstruct_file(
                engine,
                path,
                axis=axis,
                slice_index=slice_index,
                points=points,
                negative_points=negative_points,
                mode=mode,
                weights=adapter,
                modality=modality,
                zoom_in=zoom_in,
                indices=indices,
                out_dir=files.api_dir(),
                volume_name=name,
            )
            mesh = None if out["mesh"] is None else FileData(path=out["mesh"])
            return FileData(path=out["mask"]), mesh, out["info"]

        gr.api(
            reconstruct,
            api_name="reconstruct",
            concurrency_id="model",
            concurrency_limit=concurrency,
        )

    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    demo.sam3d_engine = engine
    demo.sam3d_files = files
    return demo


def _upload_path(volume) -> tuple[str, str | None]:
    """The server path of an uploaded file (only gradio's FileData: gradio has checked that
    the file was uploaded, so a client cannot name an arbitrary server path)."""
    if isinstance(volume, FileData):
        volume = volume.model_dump()
    if not (isinstance(volume, dict) and volume.get("path")):
        raise InputError(None, "volume must be an uploaded file (gradio_client.handle_file)")
    meta = volume.get("meta") or {}
    if meta.get("_type") != "gradio.FileData":
        raise InputError(None, "volume must be an uploaded file (gradio_client.handle_file)")
    return volume["path"], volume.get("orig_name")


def _slice_slider(n: int, idx: int):
    """The slice slider for an axis of ``n`` slices. Its range never collapses to one value
    (gradio's slider needs two), so an axis of one slice (a 2D image stored as 3D) freezes it
    at slice 0 instead of offering a slice 1 that is not there."""
    return gr.Slider(minimum=0, maximum=max(n - 1, 1), value=idx, interactive=n > 1)


def _same_scale(path, camera_mm):
    """A Model3D value whose camera sits at a given distance, so two views share a scale."""
    if path is None or camera_mm is None:
        return path
    return gr.Model3D(value=path, camera_position=(None, None, camera_mm))


def _scene(label: str, elem_id: str, *, height: int):
    """A read-only 3D view (.glb) on a dark background."""
    return gr.Model3D(
        label=label,
        clear_color=(0.08, 0.08, 0.1, 1.0),
        interactive=False,
        height=height,
        elem_id=elem_id,
    )


def _picture(label: str, elem_id: str, **kwargs):
    """A read-only PNG picture of a numpy image."""
    return gr.Image(
        label=label, type="numpy", format="png", interactive=False, elem_id=elem_id, **kwargs
    )


def _table(rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=list(H.METRIC_COLUMNS))


def close_app(demo: gr.Blocks) -> None:
    """Stop the server (if running) and remove the app's temporary files."""
    try:
        demo.close()
    finally:
        files = getattr(demo, "sam3d_files", None)
        if files is not None:
            files.close()


def launch(
    host: str = "127.0.0.1",
    port: int | None = 7860,
    share: bool = False,
    *,
    checkpoint=None,
    adapter=None,
    max_file_size: str | int | None = DEFAULT_MAX_FILE_SIZE,
    concurrency: int = 2,
    preload: bool = True,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
) -> gr.Blocks:
    """Load the model once, build the page and serve it.

    Parameters
    ----------
    host, port : where to listen (port None: the first free one from 7860)
    share : also open a public gradio.live link (needs internet access)
    checkpoint, adapter : base weights (None: shipped) and the adapter selected at start
    max_file_size : upload limit, e.g. "512mb"
    concurrency : model requests processed at once
    preload : load every shipped adapter now (the first switch is then instant) and warm the
        model up (the first click then skips the first forward's setup)
    prevent_thread_lock : return once serving (tests); otherwise block until Ctrl-C
    """
    from core.engine import Reconstructor

    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    t0 = time.perf_counter()
    engine = SharedEngine(Reconstructor.from_pretrained(checkpoint, adapter))
    if preload:
        engine.preload()
    if not quiet:
        print(
            f"sam3d app: model loaded{' and warmed up' if preload else ''} in "
            f"{time.perf_counter() - t0:.1f} s "
            f"(weights: {', '.join(engine.choices)})",
            flush=True,
        )
    demo = build_app(engine, concurrency=concurrency)
    # `kill` (SIGTERM) stops the server like Ctrl-C does, so the temporary files are removed
    blocking = not prevent_thread_lock and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if blocking else None
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            share=share,
            max_file_size=max_file_size,
            prevent_thread_lock=prevent_thread_lock,
            ssr_mode=False,
            quiet=quiet,
            css=CSS,
            footer_links=["api"],
        )
    except BaseException:
        close_app(demo)
        raise
    finally:
        if blocking:
            signal.signal(signal.SIGTERM, previous)
    if not prevent_thread_lock:
        close_app(demo)
    return demo


def _interrupt(signum, frame):
    raise KeyboardInterrupt
