"""Fine-tune widget: a LoRA run in the background with the viewer responsive, Stop, resume,
training on layers, and the new adapter offered in Reconstruct at once."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import write_case

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.slow]

PLUGIN = "sam3d-napari"
# The target for the longest event-loop stall while training runs is measured by
# bench/napari_stall.py (BENCHMARKS.md). A single stall depends on the machine (the VM, the
# scheduler, a garbage collection), so this test checks what training itself would break:
# the run lives in a child process, the loop keeps ticking, nearly every gap stays under the
# target, and no stall comes near the ~1 s freezes of a run inside the GUI process.
STALL_TARGET_MS = 100.0
FREEZE_MS = 500.0


@pytest.fixture
def tiny_session(tmp_path):
    """A tiny random base for the viewer's session (a fine-tune step then takes ~0.1 s)."""
    from sam3d_napari._testing import tiny_base

    return tiny_base(tmp_path / "tiny_base.safetensors")


@pytest.fixture
def flat_dataset(tmp_path):
    root = tmp_path / "flat"
    for i in range(3):
        write_case(
            root / "volumes" / f"case{i}.nii.gz", root / "labels" / f"case{i}.nii.gz", seed=i
        )
    return root


def _finetune(viewer, base):
    from sam3d_napari._session import session_for
    from sam3d_napari._testing import TINY_TRAINING

    session_for(viewer).set_base_weights(base)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune (LoRA)")
    widget.batch_size.value = 1
    widget.extra.value = " ".join(TINY_TRAINING)
    return widget


def test_finetune_runs_in_the_background_stops_resumes_and_is_offered_at_once(
    make_napari_viewer, qtbot, tmp_path, tiny_session, flat_dataset
):
    from core.adapters import AdapterManager
    from core.weights import load_model
    from sam3d_napari._testing import StallMonitor

    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "heart")
    _, recon = viewer.window.add_plugin_dock_widget(PLUGIN, "Reconstruct (click to 3D)")
    widget = _finetune(viewer, tiny_session)
    widget.folder.value = flat_dataset
    assert "flat layout: 3 case(s)" in widget.folder_info.value
    widget.output.value = tmp_path / "run"
    widget.epochs.value, widget.steps_per_epoch.value = 200, 2
    qtbot.wait(500)  # let the window settle before measuring

    # a run in the background, with the event loop watched until it has stopped
    monitor = StallMonitor(5).start()
    widget.start()
    assert widget.busy and not widget.start_button.enabled
    qtbot.waitUntil(lambda: len(widget.plot.epoch_loss) >= 1, timeout=120_000)
    child = widget.training_pid  # training runs in its own process, not the viewer's
    assert child is not None and child != os.getpid()  # None once the child has ended
    qtbot.waitUntil(lambda: len(widget.plot.epoch_loss) >= 2, timeout=120_000)
    widget.stop()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert widget.training_pid is None  # the child has ended
    stall = monitor.stop()
    gaps = np.asarray(monitor.gaps_ms)
    p99 = float(np.percentile(gaps, 99))
    print(f"\nlongest Qt event-loop stall during fine-tune: {stall:.0f} ms (p99 gap {p99:.0f} ms, "
          f"{monitor.ticks} ticks, load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")  # fmt: skip
    assert monitor.ticks > 100  # the loop kept running throughout
    assert p99 < STALL_TARGET_MS and stall < FREEZE_MS

    # Stop kept the last finished epoch, as a usable adapter
    first = widget.result
    assert first.stopped and 2 <= first.epochs_done < 200 and "Stopped" in widget.status.value
    assert first.best_val_dice is not None  # 3 cases: one held out for validation
    assert len(widget.plot.epoch_loss) == len(widget.plot.val_dice) == first.epochs_done
    assert len(widget.plot.step_loss) >= 2 * first.epochs_done
    manager = AdapterManager(load_model(tiny_session))
    manager.activate(manager.load(first.adapter_last))

    # offered in Reconstruct at once, and used there when chosen
    assert str(first.adapter_best) in [str(v) for v in recon.weights.choices]
    recon.weights.value = str(first.adapter_best)
    recon.add_click_world(viewer.layers[0].data_to_world((32, 32, 32)))
    qtbot.waitUntil(lambda: not recon.busy and recon.result is not None, timeout=60_000)
    assert recon.session._rec.name == "adapter_best"

    # resume: the finished epochs stay, the run goes on to the new total
    assert widget.resume.value  # ticked: the folder holds a run
    widget.epochs.value = first.epochs_done + 1
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    second = widget.result
    assert not second.stopped and second.epochs_done == first.epochs_done + 1
    assert [h["epoch"] for h in second.history] == list(range(1, second.epochs_done + 1))
    assert widget.progress.value == widget.progress.max


def test_finetune_on_the_image_and_labels_layers(make_napari_viewer, qtbot, tmp_path, tiny_session):
    from sam3d_napari._finetune_widget import LAYERS

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "heart")
    widget = _finetune(viewer, tiny_session)
    widget.source.value = LAYERS
    assert widget.image.value is viewer.layers[0] and widget.labels.value is viewer.layers[1]
    widget.output.value = tmp_path / "layers-run"
    widget.epochs.value, widget.steps_per_epoch.value = 1, 1
    widget.extra.value += " data.spacing=8.0"
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert widget.result is not None and widget.result.epochs_done == 1, widget.status.value
    assert (tmp_path / "layers-run" / "layers_dataset" / "labels").is_dir()
    assert widget.plot.note  # one case: no validation split, and the plot says so


def test_start_reads_the_image_layers_modality_again_unless_chosen_here(
    make_napari_viewer, tiny_session
):
    """Reconstruct keeps each image's modality in its metadata, and napari sends no event
    when it changes: Fine-tune reads it again at Start. A choice made in Fine-tune wins until
    another image is chosen."""
    from sam3d_napari._finetune_widget import LAYERS

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "heart")
    image = viewer.layers[0]
    widget = _finetune(viewer, tiny_session)
    widget.source.value = LAYERS
    assert widget.image.value is image and widget.modality.value == "ct"
    image.metadata["modality"] = "mr"  # as Reconstruct's Modality does for this image
    assert widget.job().modality == "mr" and widget.modality.value == "mr"
    widget.modality.value = "us"  # chosen here: kept, whatever the layer says
    image.metadata["modality"] = "ct"
    assert widget.job().modality == "us"
    widget.image.value = viewer.add_image(np.zeros((4, 4, 4)), name="other")
    widget.image.value = image  # chosen again: the layer's once more
    assert widget.modality.value == "ct" and widget.job().modality == "ct"


def test_closing_the_panel_stops_the_run(
    make_napari_viewer, qtbot, tmp_path, tiny_session, flat_dataset
):
    viewer = make_napari_viewer()
    widget = _finetune(viewer, tiny_session)
    widget.folder.value = flat_dataset
    widget.output.value = tmp_path / "run"
    widget.epochs.value, widget.steps_per_epoch.value = 200, 2
    widget.start()
    qtbot.waitUntil(lambda: widget.training_pid is not None, timeout=60_000)
    # napari's close button: the widget leaves its dock but stays alive; a reopened panel
    # would not know the run, which went on training into the same folder
    viewer.window.remove_dock_widget(widget.native)
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert widget.result is not None and widget.result.stopped


def test_bad_settings_are_explained_before_anything_runs(
    make_napari_viewer, tmp_path, tiny_session
):
    viewer = make_napari_viewer()
    widget = _finetune(viewer, tiny_session)
    widget.start()
    assert not widget.busy and "dataset folder" in widget.status.value
    widget.folder.value = tmp_path
    widget.learning_rate.value = "fast"
    widget.start()
    assert not widget.busy and "learning rate" in widget.status.value
    widget.learning_rate.value = "1e-3"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "last.pt").write_bytes(b"")
    widget.output.value = tmp_path / "out"
    widget.resume.value = False
    widget.start()
    assert not widget.busy and "Resume" in widget.status.value


def test_a_stopped_run_leaves_the_bar_at_the_fraction_done(
    make_napari_viewer, monkeypatch, tmp_path, flat_dataset
):
    """A run stopped after 3 of 12 steps showed a full bar (its last report was steps done
    out of steps done) next to "Stopped after 1 epoch(s)"."""
    import dataclasses

    import core.train
    from sam3d_napari._finetune_job import FinetuneJob, _stopped_before_start, run_finetune

    out = tmp_path / "run"

    def stopped_train(cfg, *, progress, should_stop, resume):
        for step in (1, 2, 3):
            progress(step, 12, f"epoch 1/4 loss 0.5 (step {step}/12)")
        return dataclasses.replace(_stopped_before_start(out), steps=3, epochs_done=1)

    monkeypatch.setattr(core.train, "train", stopped_train)
    calls = []
    job = FinetuneJob(str(out), data_root=str(flat_dataset), classes=2, epochs=4)
    run_finetune(job, progress=lambda *a: calls.append(a))
    assert calls[-1] == (3, 12, "stopped")
    _, widget = make_napari_viewer().window.add_plugin_dock_widget(PLUGIN, "Fine-tune (LoRA)")
    for call in calls:
        widget._on_progress(*call)
    assert (widget.progress.value, widget.progress.max) == (3, 12)

    # a finished run ends on a full bar, even when preprocessing counted more cases than
    # the run has steps
    def finished_train(cfg, *, progress, should_stop, resume):
        for i in (1, 300):
            progress(i, 300, f"preprocess case_{i}")
        for step in (1, 250):
            progress(step, 250, f"epoch 5/5 (step {step}/250)")
        return dataclasses.replace(_stopped_before_start(out), steps=250, stopped=False)

    monkeypatch.setattr(core.train, "train", finished_train)
    calls.clear()
    run_finetune(
        dataclasses.replace(job, output_dir=str(tmp_path / "run2")),
        progress=lambda *a: calls.append(a),
    )
    assert calls[-1] == (250, 250, "finished")


def test_a_dataset_folder_that_declares_its_modality_sets_it(
    make_napari_viewer, tmp_path, tiny_session, flat_dataset
):
    (flat_dataset / "dataset.json").write_text('{"channel_names": {"0": "MRI"}}')
    viewer = make_napari_viewer()
    widget = _finetune(viewer, tiny_session)
    assert widget.modality.value == "ct"
    widget.folder.value = flat_dataset
    assert (
        widget.modality.value == "mr" and "MR ('MRI' in dataset.json)" in widget.folder_info.value
    )
    assert widget.job().modality == "mr"


def test_a_cache_folder_sets_the_modality_it_was_made_with(
    make_napari_viewer, tmp_path, tiny_session, flat_dataset
):
    """A cache's intensities are already normalised: training it as another modality is
    refused by core.train, so the form takes the cache's own."""
    from core.preprocess import PreprocessConfig, preprocess_dataset

    cache = tmp_path / "mr_cache"
    preprocess_dataset(
        PreprocessConfig(input_dir=str(flat_dataset), out_dir=str(cache), classes=2, modality="mr")
    )
    viewer = make_napari_viewer()
    widget = _finetune(viewer, tiny_session)
    assert widget.modality.value == "ct"
    widget.folder.value = cache
    assert widget.modality.value == "mr" and "cache (mr): 3 case(s)" in widget.folder_info.value
    assert widget.job().modality == "mr"


def test_a_one_case_cache_trains_without_a_validation_split(monkeypatch, tmp_path, flat_dataset):
    """A one-case folder trains without validation; the same case as a cache failed with
    "a validation split needs at least 2 cases" (the cache was taken for two or more)."""
    import dataclasses
    import shutil

    import core.train
    from core.preprocess import PreprocessConfig, preprocess_dataset
    from sam3d_napari._finetune_job import FinetuneJob, _stopped_before_start, run_finetune

    one = tmp_path / "one"
    for sub in ("volumes", "labels"):
        (one / sub).mkdir(parents=True)
        shutil.copy(flat_dataset / sub / "case0.nii.gz", one / sub)
    cache = tmp_path / "cache"
    preprocess_dataset(PreprocessConfig(input_dir=str(one), out_dir=str(cache), classes=2))
    seen = {}

    def fake_train(cfg, *, progress, should_stop, resume):
        seen[Path(cfg.data.train_data).name] = cfg.data.val_fraction
        return dataclasses.replace(_stopped_before_start(tmp_path), stopped=False)

    monkeypatch.setattr(core.train, "train", fake_train)
    for data in (one, cache, flat_dataset):
        run_finetune(FinetuneJob(str(tmp_path / f"run_{data.name}"), data_root=str(data)))
    assert seen == {"one": 0.0, "cache": 0.0, "flat": 0.2}
