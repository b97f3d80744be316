"""A LoRA fine-tune as the Fine-tune widget runs it, free of Qt.

The widget's fields become a :class:`FinetuneJob`; :func:`run_finetune` turns it into a
``core.config.TrainConfig`` on top of the session's base weights (same model config) and
calls ``core.train.train`` with progress and stop callbacks. Training from the image and
label layers on screen writes them first as a one-case dataset in the ``flat`` layout inside
the run folder (:func:`prepare`).

:class:`TrainingProcess` runs the job in a child Python process (``_train_child``), so that
training never competes with the viewer for Python's global interpreter lock: in a thread,
scipy and preprocessing calls that hold the lock froze the viewer for up to a second at a
time. Progress comes back as JSON lines on the child's stdout; Stop is a line on its stdin
(and a closed stdin, when the viewer goes away, stops it too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

__all__ = [
    "FinetuneJob",
    "prepare",
    "run_finetune",
    "TrainingProcess",
    "read_history",
    "build_config",
    "count_classes",
]

PROTOCOL_PREFIX = "@@sam3d "

#: What the widget's rank may train at most (core's own default guard is 2 %: a rank typed in
#: on purpose is allowed to go further).
MAX_TRAINABLE_FRACTION = 0.2


@dataclass
class FinetuneJob:
    """One fine-tune, as the widget's fields say.

    Attributes
    ----------
    output_dir : the run folder (adapters end up in ``adapter_best/`` and ``adapter_last/``)
    data_root : a dataset folder (any layout, or a preprocessed cache); or None with
        ``volume`` and ``labels`` (``core.io.Volume`` / ``LabelVolume``) from layers
    classes : number of label classes; 0 = count them
    base_weights : the base's ``.safetensors`` (None: the shipped base)
    base_model : the base's ModelConfig as a dict
    extra : further ``section.key=value`` overrides, applied last
    """

    output_dir: str
    data_root: str | None = None
    volume: object = None
    labels: object = None
    case_name: str = "layers"
    classes: int = 0
    rank: int = 4
    alpha: float = 8.0
    learning_rate: float = 1e-3
    epochs: int = 5
    batch_size: int = 4
    val_fraction: float = 0.2
    steps_per_epoch: int = 50
    resume: bool = False
    modality: str = "ct"
    base_weights: str | None = None
    base_model: dict = field(default_factory=dict)
    extra: tuple = ()

    def __post_init__(self):
        if self.data_root is None and (self.volume is None or self.labels is None):
            raise ValueError("choose a dataset folder, or an image and a labels layer")
        if not str(self.output_dir).strip():
            raise ValueError("choose an output folder for the adapter")


def _override(key: str, value) -> str:
    return f"{key}={json.dumps(value)}"


def count_classes(job: FinetuneJob, data_root: Path) -> int:
    """The number of classes: the labels layer's maximum, the dataset's label names, or
    (last resort) the largest value over its label files."""
    import numpy as np

    if job.labels is not None:
        return int(np.max(job.labels.data))
    if (data_root / "manifest.json").is_file():
        from core.preprocess import cache_params

        return int(cache_params(data_root)["classes"])
    from core.datasets import discover
    from core.io import load_label

    index = discover(data_root)
    if index.label_names:
        return max(index.label_names)
    return max(int(load_label(c.label).data.max()) for c in index.cases)


def _write_layers_dataset(job: FinetuneJob, out: Path) -> Path:
    from core.atomic import safe_name
    from core.io import LabelVolume, Volume, save_image, save_label

    root = out / "layers_dataset"
    name = safe_name(job.case_name) or "case"
    img_path = root / "volumes" / f"{name}.nii.gz"
    lab_path = root / "labels" / f"{name}.nii.gz"
    if not (job.resume and img_path.is_file() and lab_path.is_file()):
        save_image(Volume(job.volume.data, job.volume.affine), img_path)
        save_label(LabelVolume(job.labels.data, job.labels.affine), lab_path)
    return root


def build_config(job: FinetuneJob, data_root: Path, classes: int, *, n_cases: int):
    """The TrainConfig of a job (LoRA on the base, the widget's settings, then ``extra``)."""
    from core.config import load_config

    val_fraction = job.val_fraction if n_cases >= 2 else 0.0
    steps = job.steps_per_epoch or None
    total = job.epochs * (steps or 200)
    over = [_override(f"model.{k}", v) for k, v in job.base_model.items()]
    over += [
        _override("data.train_data", str(data_root)),
        _override("data.classes", int(classes)),
        _override("data.val_fraction", float(val_fraction)),
        _override("data.modality", job.modality),
        _override("training.output_dir", str(job.output_dir)),
        _override("training.epochs", int(job.epochs)),
        _override("training.batch_size", int(job.batch_size)),
        _override("training.learning_rate", float(job.learning_rate)),
        _override("training.steps_per_epoch", steps),
        _override("training.warmup_steps", max(1, min(50, total // 10))),
        _override("training.weight_decay", 0.0),
        _override("training.checkpoint_every", 0),
        _override("training.init_checkpoint", job.base_weights),
        _override("lora.enabled", True),
        _override("lora.rank", int(job.rank)),
        _override("lora.alpha", float(job.alpha)),
        _override("lora.dropout", 0.05),
        _override("lora.max_trainable_fraction", MAX_TRAINABLE_FRACTION),
        *job.extra,
    ]
    return load_config(None, over)


def n_cases(data_root: Path) -> int:
    """The cases a folder trains on: a cache's finished ones, a dataset's cases."""
    manifest = data_root / "manifest.json"
    if manifest.is_file():  # a cache: its finished cases (core.train reads them alike)
        try:
            cases = json.loads(manifest.read_text()).get("cases") or {}
        except (OSError, ValueError, AttributeError):
            return 2  # core.train names the problem
        return sum(1 for c in cases.values() if isinstance(c, dict) and c.get("status") == "done")
    from core.datasets import discover

    return len(discover(data_root))


def prepare(job: FinetuneJob) -> FinetuneJob:
    """Write the layers' image and labels as a dataset in the run folder (if the job trains
    on layers); returns a job with only paths and numbers (JSON-able, for the child)."""
    out = Path(job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if job.data_root is None:
        classes = job.classes if job.classes > 0 else count_classes(job, out)
        if classes < 1:
            raise ValueError(f"{job.case_name}: the labels layer is empty (no class to learn)")
        root = _write_layers_dataset(job, out)
        job = replace(job, data_root=str(root), classes=int(classes))
    return replace(job, volume=None, labels=None)


def run_finetune(
    job: FinetuneJob,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    epoch_done: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """Run the fine-tune in this process; returns ``core.train.TrainResult``.

    ``epoch_done(record)`` receives each new ``metrics.jsonl`` record (train loss, validation
    Dice...) as soon as the epoch's files are written.
    """
    from core.train import train

    say = progress or (lambda *a: None)
    if job.data_root is None:
        say(0, 1, "writing the layers as a training case")
        job = prepare(job)
    out = Path(job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(job.data_root)
    if not data_root.is_dir():
        raise ValueError(f"{data_root}: dataset folder not found")
    classes = job.classes
    if classes <= 0:
        say(0, 1, "counting label classes")
        classes = count_classes(job, data_root)
        if classes < 1:
            raise ValueError(f"{data_root}: the labels are empty (no class to learn)")
    cfg = build_config(job, data_root, classes, n_cases=n_cases(data_root))

    metrics = out / "metrics.jsonl"
    seen = len(read_history(out)) if job.resume else 0
    planned = 0  # the run's total steps, as train reports them

    def on_progress(done, total, message):
        nonlocal seen, planned
        if not str(message).startswith("preprocess"):  # the steps, not the cases
            planned = max(planned, total)
        say(done, total, message)
        if epoch_done is not None and metrics.is_file():
            history = read_history(out)
            for rec in history[seen:]:
                epoch_done(rec)
            seen = max(seen, len(history))

    result = train(cfg, progress=on_progress, should_stop=should_stop, resume=job.resume)
    # a stopped run's bar stays at the fraction done, not full
    total = max(planned, result.steps) if result.stopped else result.steps  # finished: full
    on_progress(result.steps, total, "stopped" if result.stopped else "finished")
    return result


class TrainingProcess:
    """One fine-tune in a child process.

    :meth:`run` blocks until the child is done (call it from a worker thread) and returns
    the ``core.train.TrainResult``; :meth:`stop` may be called from any thread.
    """

    def __init__(self, job: FinetuneJob):
        self.job = job
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def run(self, *, progress=None, epoch_done=None):
        from core.train_outputs import TrainResult

        job = prepare(self.job)
        out = Path(job.output_dir)
        root = str(Path(__file__).resolve().parents[1])  # where core/ and sam3d_napari/ live
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with self._lock:
            if self._stopped:  # Stop came while the layers were being written
                return _stopped_before_start(out)
            log = open(out / "train_process.log", "ab")  # the child's stderr, for post-mortems
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "sam3d_napari._train_child"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                text=True,
                bufsize=1,
            )
        try:
            proc = self._proc
            proc.stdin.write(json.dumps(asdict(job)) + "\n")
            proc.stdin.flush()
            result = error = None
            for line in proc.stdout:  # blocking reads release the GIL
                if not line.startswith(PROTOCOL_PREFIX):
                    continue
                msg = json.loads(line[len(PROTOCOL_PREFIX) :])
                if "progress" in msg and progress is not None:
                    progress(*msg["progress"])
                elif "epoch" in msg and epoch_done is not None:
                    epoch_done(msg["epoch"])
                elif "result" in msg:
                    r = msg["result"]
                    result = TrainResult(**{**r, "history": tuple(r["history"])})
                elif "error" in msg:
                    error = msg["error"]
            proc.wait()
        finally:
            if proc.poll() is None:  # we are leaving early (an error here): end the child
                with _suppress():
                    proc.stdin.close()  # the child stops at its next batch
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()
        if error is not None:
            if error.get("user"):
                raise ValueError(error["message"])
            raise RuntimeError(error["message"])
        if result is None:
            raise RuntimeError(
                f"the training process ended without a result (exit code {proc.returncode}); "
                f"see {out / 'train_process.log'}"
            )
        return result

    @property
    def pid(self) -> int | None:
        """The training child's process id while it runs; None before it starts and after
        it ends."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def stop(self) -> None:
        """Ask the child to stop before its next batch (the last finished epoch is kept)."""
        with self._lock:
            self._stopped = True
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            try:
                proc.stdin.write("stop\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass


def _suppress():
    import contextlib

    return contextlib.suppress(OSError, ValueError)


def _stopped_before_start(out: Path):
    from core.train_outputs import TrainResult

    return TrainResult(str(out), None, None, None, None, None, None, None, None, 0, 0, True,
                       0.0, float("nan"), ())  # fmt: skip


def read_history(out: str | os.PathLike) -> list[dict]:
    """The epoch records of a run folder's ``metrics.jsonl`` (empty if none yet)."""
    path = Path(out) / "metrics.jsonl"
    if not path.is_file():
        return []
    recs = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                break  # written atomically, so only a future format change could get here
    return recs
