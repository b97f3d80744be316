"""Reconstruct widget: loading the model in the background, the weights choice (base, shipped
and fine-tuned adapters, a folder), and the modality kept with each image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import two_organs
from napari_common import LV, PLUGIN, click_at, organ_click, sample, wait_result

pytest.importorskip("napari")
pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("ignore:Non-orthogonal slicing:UserWarning"),
]


def test_the_model_loads_and_warms_up_in_the_background_when_the_widget_opens(
    make_napari_viewer, qtbot
):
    from sam3d_napari._widgets import ReconstructWidget

    viewer = make_napari_viewer()
    widget = ReconstructWidget(viewer)  # no image yet: the user opens one meanwhile
    assert widget.loading and "Loading the model" in widget.timing.value
    viewer.open_sample(PLUGIN, "heart")
    qtbot.waitUntil(lambda: not widget.loading, timeout=60_000)
    rec = widget.session._rec
    assert widget.session.ready and rec.warm and widget.timing.value == "Model ready."
    assert rec.name == "base" and not rec.merged
    # choosing an adapter merges it in the background too
    from core.weights import list_shipped_adapters

    shipped = list(list_shipped_adapters())
    if shipped:
        widget.weights.value = shipped[0]
        assert widget.loading
        qtbot.waitUntil(lambda: not widget.loading, timeout=120_000)
        assert rec.name == shipped[0] and len(rec.merged) == 1
    # the first click runs on the loaded, warmed model (and the merged adapter)
    gt = np.asarray(viewer.layers["heart labels (ground truth)"].data)
    click_at(viewer, widget, organ_click(gt, LV).voxel())
    wait_result(widget, qtbot)
    assert widget.session._rec is rec and widget.result.mask.any()
    assert len(rec.merged) == (1 if shipped else 0)  # merged once, by the preload
    # another image on a warm session loads and merges nothing again
    viewer.add_image(np.zeros((8, 8, 8), np.float32), name="other")
    widget.image.value = viewer.layers["other"]
    qtbot.waitUntil(lambda: not widget.loading, timeout=60_000)
    assert widget.session._rec is rec and len(rec.merged) == (1 if shipped else 0)


def test_changing_the_base_weights_never_waits_for_a_load_in_progress(tmp_path):
    """A preload or a reconstruction holds the session's lock for seconds; choosing other base
    weights from the GUI thread must not wait for it. The next use loads them."""
    import threading
    from types import SimpleNamespace

    from sam3d_napari._session import Session

    session = Session()
    session._rec, session._rec_base = SimpleNamespace(warm=True), None  # loaded, in use
    assert session.ready
    with session._lock:  # a load in progress
        t = threading.Thread(target=session.set_base_weights, args=(tmp_path / "other",))
        t.start()
        t.join(timeout=10)
        assert not t.is_alive()
    assert session.base_weights == str(tmp_path / "other") and not session.ready


def test_a_model_that_fails_to_load_says_so_when_the_widget_opens(
    make_napari_viewer, qtbot, tmp_path
):
    from sam3d_napari._session import session_for
    from sam3d_napari._widgets import ReconstructWidget

    viewer = make_napari_viewer()
    session_for(viewer).set_base_weights(tmp_path / "missing.safetensors")
    viewer.open_sample(PLUGIN, "heart")
    widget = ReconstructWidget(viewer)
    qtbot.waitUntil(lambda: not widget.loading, timeout=60_000)
    assert "Loading the model failed" in widget.status.value
    assert "missing.safetensors" in widget.status.value
    assert not widget.session.ready and widget.timing.value == ""  # never "ready"


def test_choosing_the_built_in_base_again_reruns_with_it(make_napari_viewer, qtbot, fast_model):
    from core.weights import list_shipped_adapters
    from sam3d_napari._reconstruct_widget import ADAPTER_FOLDER

    shipped = list(list_shipped_adapters())
    if not shipped:
        pytest.skip("no shipped adapter")
    viewer = make_napari_viewer()
    widget, _, gt = sample(viewer)
    click_at(viewer, widget, organ_click(gt, LV).voxel())
    wait_result(widget, qtbot)
    base = widget.result
    widget.weights.value = ADAPTER_FOLDER
    widget.weights.value = shipped[0]
    qtbot.waitUntil(
        lambda: not widget.busy and not widget.loading and widget.result is not base,
        timeout=120_000,
    )
    assert fast_model.name == shipped[0]
    widget.weights.native.setCurrentIndex(0)  # the user picks "built-in base" (data None)
    assert widget.weights.value is None and widget.busy  # re-runs the prompts with the base
    qtbot.waitUntil(lambda: not widget.busy and not widget.loading, timeout=60_000)
    assert fast_model.name == "base" and np.array_equal(widget.result.mask, base.mask)


def test_weights_offer_base_shipped_adapters_and_a_folder(
    make_napari_viewer, qtbot, tmp_path, fast_model
):
    from core.weights import list_shipped_adapters
    from sam3d_napari._reconstruct_widget import ADAPTER_FOLDER

    viewer = make_napari_viewer()
    widget, _, gt = sample(viewer)
    shipped = list(list_shipped_adapters())
    labels = [str(c) for c in widget.weights.choices]
    assert all(name in labels for name in shipped)
    widget.weights.value = ADAPTER_FOLDER
    assert not widget.adapter_dir.native.isHidden()  # shown (the viewer itself is hidden)
    widget.adapter_dir.value = tmp_path  # not an adapter
    click_at(viewer, widget, organ_click(gt, LV).voxel())
    assert not widget.busy and str(tmp_path) in widget.status.value  # said at once
    if shipped:
        widget.weights.value = shipped[0]  # reruns the prompts with the adapter
        wait_result(widget, qtbot)
        assert fast_model.name == shipped[0] and widget.result.mask.any()

    # adapters fine-tuned in the session join the list before "adapter folder...", in order,
    # and the chosen entry stays chosen without a change (no re-run)
    chosen = widget.weights.value
    changes = []
    widget.weights.changed.connect(changes.append)
    for run in ("run1", "run2"):
        widget.session.add_adapter(run, tmp_path / run)
    names = [widget.weights.native.itemText(i) for i in range(widget.weights.native.count())]
    assert names[-3:] == ["run1 (fine-tuned)", "run2 (fine-tuned)", ADAPTER_FOLDER]
    assert widget.weights.value == chosen and changes == []


def test_an_eight_bit_volume_opened_as_ct_says_to_check_the_modality(
    make_napari_viewer, qtbot, fast_model
):
    from core.synthetic import make_heart_phantom
    from sam3d_napari._layers import layer_transform
    from sam3d_napari._widgets import ReconstructWidget

    image, label = make_heart_phantom(7)
    u8 = (np.clip((image.data + 1024) / 1500, 0, 1) * 255).astype(np.uint8)
    viewer = make_napari_viewer()
    viewer.add_image(
        u8, name="grey", metadata={"affine": image.affine}, **layer_transform(image.affine)
    )
    widget = ReconstructWidget(viewer)
    assert widget.modality.value == "ct"
    click_at(viewer, widget, organ_click(label.data, LV).voxel())
    wait_result(widget, qtbot)
    assert "Check the Modality: values 0..255 do not look like CT" in widget.status.value
    # every warning is shown, not only the first (another may name an adapter's modality)
    widget._show(dataclasses.replace(widget.result, warnings=("first note", "second note")))
    assert "Check the Modality: first note; second note." in widget.status.value
    widget._show(widget._results[widget._key()])
    widget.modality.value = "mr"  # re-runs the object with the new setting
    qtbot.waitUntil(lambda: not widget.busy and "Check the Modality" not in widget.status.value)
    assert "Add clicks to refine" in widget.status.value


def test_the_modality_chosen_for_an_image_stays_with_it_and_reaches_fine_tune(
    make_napari_viewer, fast_model
):
    from sam3d_napari._layers import layer_transform
    from sam3d_napari._widgets import FinetuneWidget, ReconstructWidget

    img, _ = two_organs(shape=(24, 28, 20))
    a = np.diag([2.0, 2.0, 3.0, 1.0])
    viewer = make_napari_viewer()
    mr = viewer.add_image(img + 200, name="mr", metadata={"affine": a}, **layer_transform(a))
    ct = viewer.add_image(
        img, name="ct", metadata={"affine": a, "modality": "ct"}, **layer_transform(a)
    )
    widget = ReconstructWidget(viewer)
    widget.image.value = mr
    widget.modality.value = "mr"
    widget.image.value = ct
    assert widget.modality.value == "ct"
    widget.image.value = mr  # back to the MR: its modality again, not the CT's
    assert widget.modality.value == "mr"
    finetune = FinetuneWidget(viewer)
    finetune.image.value = ct
    finetune.image.value = mr
    assert finetune.modality.value == "mr"
    # an image never set keeps the modality on show when chosen (its clicks run with it)
    other = viewer.add_image(img + 300, name="other", metadata={"affine": a}, **layer_transform(a))
    widget.image.value = other
    assert widget.modality.value == "mr" and other.metadata["modality"] == "mr"
    finetune.image.value = ct
    finetune.image.value = other
    assert finetune.modality.value == "mr"
