"""Fine-tune: train a LoRA adapter on a dataset folder or on the layers on screen.

Training (``core.train.train``) runs in a child process watched by a worker thread
(``_finetune_job.TrainingProcess``); its progress and epoch records reach the GUI as queued
Qt signals, so the viewer stays responsive. Stop asks the loop to
return before its next batch: the adapter of the last finished epoch stays usable. A run
can be resumed from its folder. When an adapter is saved it is offered at once in
Reconstruct's weights list (the viewer's shared session).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import napari
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    RadioButtons,
    SpinBox,
)
from qtpy.QtCore import QObject, Signal

from core.intensity import MODALITIES
from sam3d_napari._finetune_job import FinetuneJob, TrainingProcess, n_cases, read_history
from sam3d_napari._plot import TrainingPlot
from sam3d_napari._qt_common import (
    StatusLabel,
    form,
    labels_of,
    layer_choices,
    notify,
    on_close,
    one_line,
    row,
    start_worker,
    volume_of,
)
from sam3d_napari._session import session_for

__all__ = ["FinetuneWidget"]

FOLDER, LAYERS = "dataset folder", "image + labels layers"
_LOSS = re.compile(r"epoch (\d+)/(\d+) loss ([-+0-9.eE]+|nan)")


class _Relay(QObject):
    """Carries the worker thread's callbacks to the GUI thread (queued signals)."""

    progress = Signal(int, int, str)
    epoch = Signal(dict)


def default_output_dir() -> Path:
    return Path.home() / "sam3d-adapters" / time.strftime("adapter-%Y%m%d-%H%M%S")


class FinetuneWidget(Container):
    """Fine-tune (LoRA). See the module docstring; the README has a user guide."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=False)
        # napari hands plugins a proxy that hides private attributes; only public API is
        # used here, and layer identity checks need the real objects.
        viewer = getattr(viewer, "__wrapped__", viewer)
        self.viewer = viewer
        self.session = session_for(viewer)
        self._worker = None
        self._stop = threading.Event()
        self._relay = _Relay()
        self._relay.progress.connect(self._on_progress)
        self._relay.epoch.connect(self._on_epoch)
        self._result = None
        self._error = None
        self._steps_per_epoch = None
        self._process = None

        self.source = RadioButtons(label="Training data", choices=[FOLDER, LAYERS], value=FOLDER)
        self.folder = FileEdit(label="Dataset folder", mode="d")
        self.folder_info = StatusLabel("totalseg, nnU-Net or flat layout (or a cache)")
        self.image = ComboBox(label="Image", choices=layer_choices(viewer, "image"))
        self.labels = ComboBox(label="Labels", choices=layer_choices(viewer, "labels"))
        self.modality = ComboBox(label="Modality", choices=list(MODALITIES), value="ct")
        # The Modality shown came from the image layer (Reconstruct keeps each image's choice
        # in its metadata, napari sends no event when it changes): Start reads it again. A
        # choice made here wins until another image is chosen.
        self._modality_from_layer = True
        self._setting_modality = False
        self.classes = SpinBox(label="Classes (0: auto)", min=0, max=10000, value=0)
        self.rank = SpinBox(label="LoRA rank", min=1, max=64, value=4)
        self.alpha = FloatSpinBox(label="LoRA alpha", min=0.5, max=512.0, step=0.5, value=8.0)
        self.learning_rate = LineEdit(label="Learning rate", value="1e-3")
        self.epochs = SpinBox(label="Epochs", min=1, max=10000, value=5)
        self.batch_size = SpinBox(label="Batch size", min=1, max=256, value=4)
        self.val_fraction = FloatSpinBox(
            label="Validation split", min=0.0, max=0.9, step=0.05, value=0.2
        )
        self.steps_per_epoch = SpinBox(label="Steps/epoch (0: all)", min=0, max=10**6, value=50)
        self.output = FileEdit(label="Output folder", mode="d", value=default_output_dir())
        self.extra = LineEdit(label="More settings", value="")
        self.extra.tooltip = "section.key=value overrides, space separated (see sam3d train)"
        self.resume = CheckBox(text="Resume the run in the output folder", value=False)
        self.start_button = PushButton(text="Start")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self.status = StatusLabel("Choose training data, then Start.")
        self.plot = TrainingPlot()

        self.extend(
            [
                form(self.source, self.folder),
                self.folder_info,
                form(
                    self.image,
                    self.labels,
                    self.modality,
                    self.classes,
                    self.rank,
                    self.alpha,
                    self.learning_rate,
                    self.epochs,
                    self.batch_size,
                    self.val_fraction,
                    self.steps_per_epoch,
                    self.output,
                    self.extra,
                ),
                self.resume,
                row(self.start_button, self.stop_button),
                self.progress,
                self.status,
            ]
        )
        self.native.layout().addWidget(self.plot)
        self.source.changed.connect(self._on_source)
        self.image.changed.connect(self._on_image)
        self.modality.changed.connect(self._on_modality_choice)
        self.folder.changed.connect(self._on_folder)
        self.output.changed.connect(self._on_output)
        self.start_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        for ev in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, ev).connect(self._reset_layers)
        # closed (destroyed, or napari's close button): the run stops, its epochs kept
        self._close_watcher = on_close(self.native, self.stop)
        self._on_source(self.source.value)
        self._on_image(self.image.value)

    # ------------------------------------------------------------------------------ form

    def _reset_layers(self, *_):
        self.image.reset_choices()
        self.labels.reset_choices()

    def _on_image(self, layer):
        self._modality_from_layer = True
        self._show_layer_modality(layer)

    def _show_layer_modality(self, layer) -> None:
        modality = (getattr(layer, "metadata", None) or {}).get("modality")
        if modality in MODALITIES and modality != self.modality.value:
            self._set_modality(modality)

    def _set_modality(self, value: str) -> None:
        self._setting_modality = True
        try:
            self.modality.value = value
        finally:
            self._setting_modality = False

    def _on_modality_choice(self, _value):
        if not self._setting_modality:  # the user's choice, not the layer's
            self._modality_from_layer = False

    def _on_source(self, value):
        from_folder = value == FOLDER
        self.folder.visible = self.folder_info.visible = from_folder
        self.image.visible = self.labels.visible = not from_folder

    def _on_folder(self, value):
        from core.datasets import discover
        from core.errors import InputError

        path = Path(value)
        if (path / "manifest.json").is_file():
            from core.preprocess import cache_params

            try:
                modality = cache_params(path).get("modality")
            except (OSError, ValueError, KeyError):  # core.train names the problem at Start
                modality = None
            if modality in MODALITIES:  # a cache is trained as what it was made of
                self._set_modality(modality)
            n = n_cases(path)
            text = f"a preprocessed cache ({modality or 'ct'}): {n} case(s)"
            self.folder_info.show_message(
                text + ("; one case: no validation split" if n < 2 else "")
            )
            return
        try:
            index = discover(path)
        except (InputError, ValueError, OSError) as exc:
            self.folder_info.show_message(one_line(exc), "warning")
            return
        text = f"{index.layout} layout: {len(index)} case(s)"
        if index.modality:  # the dataset says what it holds (dataset.json)
            self._set_modality(index.modality)
            text += f", {index.modality.upper()} ({index.declared_channel!r} in dataset.json)"
        if index.problems:
            text += f"; {len(index.problems)} problem(s), e.g. {index.problems[0]}"
        if len(index) < 2:
            text += "; one case: no validation split"
        self.folder_info.show_message(text, "warning" if index.problems else "info")

    def _on_output(self, value):
        has_run = (Path(value) / "last.pt").is_file()
        self.resume.value = has_run
        if has_run:
            self._show_history(Path(value))

    def _show_history(self, out: Path):
        self.plot.clear()
        for rec in read_history(out):
            self.plot.add_epoch(rec)

    def job(self) -> FinetuneJob:
        """The fine-tune the form describes (raises ValueError with a message)."""
        try:
            lr = float(self.learning_rate.value)
        except ValueError:
            raise ValueError(
                f"learning rate must be a number, got {self.learning_rate.value!r}"
            ) from None
        if not lr > 0:
            raise ValueError("learning rate must be positive")
        kw = {}
        if self.source.value == FOLDER:
            folder = self.folder.value
            if not folder or str(folder) in ("", "."):
                raise ValueError("choose the dataset folder")
            kw["data_root"] = str(folder)
        else:
            img, lab = self.image.value, self.labels.value
            if img is None or lab is None:
                raise ValueError("choose an image layer and a labels layer")
            if self._modality_from_layer:  # e.g. changed in Reconstruct since it was chosen
                self._show_layer_modality(img)
            from core.io import LabelVolume, check_same_grid

            volume = volume_of(img)
            data, affine = labels_of(lab)
            labels = LabelVolume(data.astype(data.dtype, copy=True), affine, lab.name)
            check_same_grid(volume, labels)
            kw.update(volume=volume, labels=labels, case_name=img.name)
        return FinetuneJob(
            output_dir=str(self.output.value),
            classes=int(self.classes.value),
            rank=int(self.rank.value),
            alpha=float(self.alpha.value),
            learning_rate=lr,
            epochs=int(self.epochs.value),
            batch_size=int(self.batch_size.value),
            val_fraction=float(self.val_fraction.value),
            steps_per_epoch=int(self.steps_per_epoch.value),
            resume=bool(self.resume.value),
            modality=str(self.modality.value),
            base_weights=self.session.base_weights,
            base_model=self.session.base_model_config(),
            extra=tuple(self.extra.value.split()),
            **kw,
        )

    # ------------------------------------------------------------------------------ running

    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def training_pid(self) -> int | None:
        """The process the running fine-tune trains in (never the viewer's); None when idle."""
        return self._process.pid if self._process is not None else None

    @property
    def result(self):
        """The last run's ``core.train.TrainResult`` (None before one finished)."""
        return self._result

    def start(self, *_):
        """Start (or resume) the fine-tune in a worker thread."""
        from napari.qt.threading import create_worker

        if self._worker is not None:
            return
        try:
            job = self.job()
        except Exception as exc:  # any bad field or layer: one line in the widget
            self.status.show_message(one_line(exc), "error")
            return
        out = Path(job.output_dir)
        if not job.resume and (out / "last.pt").is_file():
            self.status.show_message(
                f"{out} already holds a run: tick Resume, or choose another output folder.",
                "error",
            )
            return
        self._stop.clear()
        self._result, self._error = None, None
        self._steps_per_epoch = None
        if job.resume:
            self._show_history(out)
        else:
            self.plot.clear()
        self.progress.max, self.progress.value = 1, 0
        self._set_running(True)
        self.status.show_message(f"Training in {out} ...")
        relay = self._relay
        self._process = TrainingProcess(job)
        self._worker = create_worker(
            self._process.run,
            progress=relay.progress.emit,
            epoch_done=relay.epoch.emit,
            _ignore_errors=True,
        )
        self._worker.returned.connect(self._on_returned)
        self._worker.errored.connect(self._on_error)
        self._worker.finished.connect(self._on_finished)
        start_worker(self._worker)

    def stop(self, *_):
        """Ask the run to stop before its next batch (the last finished epoch is kept)."""
        if self._worker is None:
            return
        self._stop.set()
        if self._process is not None:
            self._process.stop()
        self.stop_button.enabled = False
        self.status.show_message("Stopping after the current step ...")

    def _set_running(self, running: bool):
        self.start_button.enabled = not running
        self.stop_button.enabled = running
        for w in (self.source, self.folder, self.image, self.labels, self.output, self.resume):
            w.enabled = not running

    def _on_progress(self, done: int, total: int, message: str):
        if total > 0:
            self.progress.max = total
            self.progress.value = min(done, total)
        m = _LOSS.search(message)
        if m and total > 0:
            epoch, epochs = int(m.group(1)), int(m.group(2))
            per_epoch = max(1, total // epochs)
            frac = (done - (epoch - 1) * per_epoch) / per_epoch
            self.plot.add_step(epoch - 1 + min(max(frac, 0.0), 1.0), float(m.group(3)))
        if not self._stop.is_set():
            self.status.show_message(message)

    def _on_epoch(self, record: dict):
        self.plot.add_epoch(record)
        if record.get("val_dice") is None:
            self.plot.note = "no validation (needs 2+ cases)"

    def _on_returned(self, result):
        self._result = result
        out = Path(result.output_dir)
        folder = result.adapter_best or result.adapter_last
        if folder is None:
            self.status.show_message(
                "Stopped before the first epoch finished: no adapter was saved "
                "(Start again with Resume unticked, or a new folder).", "warning"
            )  # fmt: skip
            return
        name = self.session.add_adapter(out.name, folder)
        what = "Stopped" if result.stopped else "Finished"
        dice = ""
        if result.best_val_dice is not None:
            dice = f", best validation Dice {result.best_val_dice:.3f} (epoch {result.best_epoch})"
        msg = (f"{what} after {result.epochs_done} epoch(s){dice}. Adapter {folder} is "
               f"selectable in Reconstruct as '{name} (fine-tuned)'.")  # fmt: skip
        self.status.show_message(msg)
        notify(msg)

    def _on_error(self, exc):
        self._error = exc
        msg = one_line(exc)
        self.status.show_message(f"Training failed: {msg}", "error")
        notify(msg, "error")

    def _on_finished(self):
        self._worker = None
        self._process = None
        self._set_running(False)
        # the folder now holds a run: Start again continues it (more epochs, after a Stop)
        self.resume.value = (Path(self.output.value) / "last.pt").is_file()
