"""The CT window a cache was preprocessed with travels with the adapter trained on it.

``sam3d preprocess --ct_window LOW,HIGH`` normalises a training cache in another window than
the default; an adapter trained on it must see the same window at inference, or every front
end feeds it other intensities than it learnt (silently: the masks just get worse).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.adapter_files import ADAPTER_INFO, trained_ct_window
from core.clicks import Click, PromptSet
from core.intensity import DEFAULT_CT_WINDOW

TIGHT = (-200.0, 300.0)


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"ct_window": [-200, 300]}, TIGHT),
        ({"ct_window": [-200.0, 300.0], "intensity": "ct: ..."}, TIGHT),
        ({}, None),  # adapters from before the window was recorded: the default
        ({"ct_window": None}, None),  # MR and US adapters
        ({"ct_window": [300, -200]}, None),
        ({"ct_window": ["a", "b"]}, None),
        ({"ct_window": [True, 2]}, None),
        ({"ct_window": [1, 2, 3]}, None),
    ],
)
def test_trained_ct_window_reads_the_data_summary(data, expected):
    assert trained_ct_window({"data": data}) == expected
    assert trained_ct_window({}) is None


# --------------------------------------------------------------------------------------------
# the engine


@pytest.fixture(scope="module")
def rec():
    import torch

    from core.engine import Reconstructor

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Reconstructor.from_pretrained()
    torch.set_num_threads(n)


def _adapter_with_window(tmp_path: Path, window) -> Path:
    """The shipped head-and-neck adapter, its metadata saying it was trained in ``window``."""
    from core.weights import resolve_adapter

    folder = tmp_path / "tight-ct"
    shutil.copytree(resolve_adapter("headneck-ct"), folder)
    info = json.loads((folder / ADAPTER_INFO).read_text())
    info["data"]["ct_window"] = list(window)
    (folder / ADAPTER_INFO).write_text(json.dumps(info))
    return folder


def _heart():
    from core.synthetic import make_heart_phantom

    image, label = make_heart_phantom(seed=3)
    return image, label


def test_the_engine_uses_the_adapters_training_window(rec, tmp_path):
    image, label = _heart()
    k = label.data.shape[2] // 2
    r, c = (int(v) for v in np.argwhere(label.data[:, :, k] == 2).mean(0))
    prompts = PromptSet((Click(2, k, r, c),))
    try:
        rec.set_adapter(_adapter_with_window(tmp_path, TIGHT))
        assert rec.trained_ct_window == TIGHT and rec.ct_window_for() == TIGHT
        own = rec.predict(image, prompts, mesh=False)
        tight = rec.predict(image, prompts, mesh=False, ct_window=TIGHT)
        default = rec.predict(image, prompts, mesh=False, ct_window=DEFAULT_CT_WINDOW)
        assert np.array_equal(own.cube_probability, tight.cube_probability)
        assert not np.allclose(own.cube_probability, default.cube_probability, atol=1e-3)
        assert not any("window" in w for w in own.warnings + tight.warnings)
        (note,) = [w for w in default.warnings if "window" in w]
        assert "trained on CT in the window [-200, 300] HU" in note
        assert "[-1000, 2000]" in note

        # MR scales by percentiles: no window, no window note
        mr = rec.predict(image, prompts, mesh=False, modality="mr")
        assert not any("window" in w for w in mr.warnings)

        rec.set_adapter("headneck-ct")  # recorded nothing: the default
        assert rec.trained_ct_window is None and rec.ct_window_for() == DEFAULT_CT_WINDOW
        rec.set_adapter(None)
        assert rec.ct_window_for() == DEFAULT_CT_WINDOW
        assert rec.ct_window_for((-100, 100)) == (-100.0, 100.0)
    finally:
        rec.set_adapter(None)


# --------------------------------------------------------------------------------------------
# training records it; a validation cache in another window is refused


def test_training_records_the_caches_window_and_refuses_a_mismatched_val_cache(
    hearts_raw, tmp_path
):
    from train_common import make_cfg

    from core.preprocess import PreprocessConfig, preprocess_dataset
    from core.train import train

    caches = {}
    for name, window in (("tight", TIGHT), ("default", DEFAULT_CT_WINDOW)):
        pcfg = PreprocessConfig(
            input_dir=str(hearts_raw),
            out_dir=str(tmp_path / name),
            classes=5,
            spacing=6.0,
            slices_per_axis=2,
            ct_window=window,
        )
        assert preprocess_dataset(pcfg).n_done == 4
        caches[name] = tmp_path / name

    result = train(make_cfg(caches["tight"], tmp_path / "run", "training.epochs=1"))
    summary = json.loads((tmp_path / "run" / "data_summary.json").read_text())
    assert summary["ct_window"] == list(TIGHT)
    assert summary["intensity"] == "ct: clip to [-200, 300] HU, map to [0, 1]"
    assert result.epochs_done == 1

    mixed = make_cfg(caches["tight"], tmp_path / "mixed", f"data.val_data={caches['default']}")
    with pytest.raises(ValueError, match=r"default: validation intensities were normalised as "
                       r"'ct: clip to \[-1000, 2000\] HU.*same --ct_window"):  # fmt: skip
        train(mixed)
    assert not (tmp_path / "mixed" / "last.pt").exists()


def test_a_lora_adapter_carries_its_training_window(hearts_raw, tmp_path):
    import torch
    from train_common import make_cfg

    from core.checkpoint import save_weights_safetensors
    from core.engine import Reconstructor
    from core.model import Sam3DMed
    from core.preprocess import PreprocessConfig, preprocess_dataset
    from core.train import train

    pcfg = PreprocessConfig(
        input_dir=str(hearts_raw),
        out_dir=str(tmp_path / "cache"),
        classes=5,
        spacing=6.0,
        slices_per_axis=2,
        ct_window=TIGHT,
    )
    assert preprocess_dataset(pcfg).n_done == 4
    cfg0 = make_cfg(tmp_path / "cache", tmp_path / "l")
    torch.manual_seed(1)
    base = Sam3DMed(cfg0.model)
    base_path = save_weights_safetensors(base, tmp_path / "base.safetensors", cfg0.model)
    cfg = make_cfg(tmp_path / "cache", tmp_path / "l",
                   f"training.init_checkpoint={json.dumps(str(base_path))}", "lora.enabled=true",
                   "lora.rank=2", "lora.max_trainable_fraction=0.05", "training.epochs=1")  # fmt: skip
    result = train(cfg)
    rec = Reconstructor.from_pretrained(base_path, result.adapter_best)
    assert rec.trained_ct_window == TIGHT


# --------------------------------------------------------------------------------------------
# the command line


def test_predict_and_eval_take_a_window_and_record_the_one_used(tmp_path, capsys):
    from core.cli import main
    from core.synthetic import write_heart_dataset

    root = tmp_path / "hearts"
    write_heart_dataset(root, 1, seed=5)
    case = root / "heart_000"
    image = case / "heart_000-image.nii.gz"
    out = tmp_path / "pred"
    assert main(["predict", "--volume", str(image), "--slice", "32", "--point", "32,32",
                 "--ct_window", "-200,300", "--out", str(out)]) == 0  # fmt: skip
    assert json.loads((out / "timings.json").read_text())["ct_window"] == list(TIGHT)
    assert main(["predict", "--volume", str(image), "--slice", "32", "--point", "32,32",
                 "--out", str(tmp_path / "pred2")]) == 0  # fmt: skip
    timings = json.loads((tmp_path / "pred2" / "timings.json").read_text())
    assert timings["ct_window"] == list(DEFAULT_CT_WINDOW)

    ev = tmp_path / "ev"
    assert main(["eval", "--data_root", str(root), "--output_dir", str(ev), "--clicks", "1",
                 "--classes", "2", "--ct_window", "-200,300"]) == 0  # fmt: skip
    assert json.loads((ev / "metrics.json").read_text())["config"]["ct_window"] == list(TIGHT)
    ev2 = tmp_path / "ev2"
    assert main(["eval", "--data_root", str(root), "--output_dir", str(ev2), "--clicks", "1",
                 "--classes", "2", "--no_baselines"]) == 0  # fmt: skip
    config = json.loads((ev2 / "metrics.json").read_text())["config"]
    assert config["ct_window"] == list(DEFAULT_CT_WINDOW)
    capsys.readouterr()


def test_a_bad_window_is_refused():
    from core.evaluate import EvalConfig

    with pytest.raises(ValueError, match="high > low"):
        EvalConfig(data_root="x", output_dir="y", ct_window=(300, -200))
