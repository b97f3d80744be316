"""Weights files: safetensors + JSON, exact round trips, clear refusals, shipped assets."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config

import core.weights as W
from core.errors import InputError
from core.model import ModelConfig, Sam3DMed
from core.weights import (
    list_shipped_adapters,
    load_model,
    resolve_adapter,
    save_weights,
    shipped_base_path,
    weights_hash,
)

TINY = tiny_model_config(16)


def make_model(seed: int = 0, cfg: ModelConfig = TINY) -> Sam3DMed:
    torch.manual_seed(seed)
    return Sam3DMed(cfg).eval()


def make_batch(cfg: ModelConfig = TINY, seed: int = 123) -> dict:
    g = torch.Generator().manual_seed(seed)
    c, s = cfg.cube_size, cfg.view_size
    crop_pm = torch.randn(1, 3, s, s, generator=g) * 30
    crop_pm[:, :, : s // 2, : s // 2] = float("nan")  # one patch window with no valid point
    return {
        "cube": torch.rand(1, 7, c, c, c, generator=g),
        "crop_view": torch.rand(1, 5, s, s, generator=g),
        "crop_pointmap": crop_pm,
        "full_view": torch.rand(1, 5, s, s, generator=g),
        "full_pointmap": torch.randn(1, 3, s, s, generator=g) * 30,
        "center": torch.randn(1, 3, generator=g),
    }


@torch.no_grad()
def outputs(model, batch) -> dict:
    return {k: v.clone() for k, v in model(batch).items()}


def assert_same_outputs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def saved(tmp_path):
    model = make_model()
    path = save_weights(
        model, tmp_path / "w", metadata={"trained_on": "4 phantoms", "recipe": {"lr": 1e-3}}
    )
    return model, path


def test_save_load_round_trip_is_exact(saved):
    model, path = saved
    assert path.name == "w.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.json", "w.safetensors"]
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["format_version"] == 1
    assert info["model"] == json.loads(TINY.to_json())
    assert info["sha256"] == weights_hash(model.state_dict())
    assert info["trained_on"] == "4 phantoms" and info["recipe"] == {"lr": 1e-3}

    batch = make_batch()
    for spelling in (path, path.with_suffix(".json"), path.with_suffix(""), str(path)):
        loaded = load_model(spelling)
        assert loaded.cfg == TINY and not loaded.training
        assert weights_hash(loaded.state_dict()) == info["sha256"]
        assert_same_outputs(outputs(loaded, batch), outputs(model, batch))


def test_hash_is_stable_and_sees_every_value():
    a, b = make_model(0), make_model(0)
    sd = a.state_dict()
    assert weights_hash(sd) == weights_hash(b.state_dict())
    assert weights_hash(dict(reversed(list(sd.items())))) == weights_hash(sd)
    assert weights_hash(make_model(1).state_dict()) != weights_hash(sd)
    changed = {k: v.clone() for k, v in sd.items()}
    changed["decoder.head.bias"][0] += 1e-6
    assert weights_hash(changed) != weights_hash(sd)
    as_double = {k: v.double() for k, v in sd.items()}
    assert weights_hash(as_double) != weights_hash(sd)


def test_loading_never_unpickles(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load / pickle called")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr("pickle.load", refuse)
    monkeypatch.setattr("pickle.loads", refuse)
    load_model(saved[1])


def test_missing_shipped_base_says_where_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "ASSETS_DIR", tmp_path / "assets")
    assert shipped_base_path() == tmp_path / "assets" / "base.safetensors"
    with pytest.raises(InputError, match="shipped base weights not found at .*train them"):
        load_model(None)


def test_shipped_base_loads_when_present(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "ASSETS_DIR", tmp_path / "assets")
    model = make_model(3)
    save_weights(model, tmp_path / "assets" / "base", metadata={})
    batch = make_batch()
    assert_same_outputs(outputs(load_model(), batch), outputs(model, batch))


def _rewrite_json(path: Path, **changes) -> None:
    jp = path.with_suffix(".json")
    info = json.loads(jp.read_text())
    info.update(changes)
    jp.write_text(json.dumps(info))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "checkpoint file not found"),
        (b"\x00garbage" * 10, "not a readable sam3d checkpoint"),
        ("pickle", "not a readable sam3d checkpoint"),  # code in a pickle is never run
        ("foreign", "not a sam3d checkpoint"),
    ],
)
def test_bad_pt_checkpoints_are_refused_naming_the_file(tmp_path, content, message):
    import torch

    path = tmp_path / "best.pt"
    if content == "pickle":
        torch.save({"model": Path("x")}, path)  # an arbitrary object: weights_only refuses it
    elif content == "foreign":
        torch.save({"model": torch.zeros(2)}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        load_model(path)
    assert err.value.path == str(path) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "damage, culprit, message",
    [
        (lambda p: p.unlink(), "w.safetensors", "weights file not found"),
        (lambda p: p.with_suffix(".json").unlink(), "w.json", "metadata file not found"),
        (lambda p: p.write_bytes(b"\x00garbage" * 10), "w.safetensors", "corrupt"),
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "w.safetensors", "corrupt"),
        (lambda p: p.with_suffix(".json").write_text("{nope"), "w.json", "not readable JSON"),
        (lambda p: _rewrite_json(p, sha256="0" * 64), "w.safetensors", "sha256"),
        (lambda p: _rewrite_json(p, format_version=7), "w.json", "newer"),
        (lambda p: _rewrite_json(p, model={"dim": 3}), "w.json", "bad model config"),
        (
            lambda p: _rewrite_json(p, model=asdict(replace(TINY, depth=2))),
            "w.safetensors",
            r"tensor names do not match the model config: \d+ missing \(e.g. blocks.1",
        ),
        (
            lambda p: _rewrite_json(p, model=asdict(replace(TINY, mlp_ratio=4.0))),
            "w.safetensors",
            "tensor shapes do not match the model config",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_file(saved, damage, culprit, message):
    _, path = saved
    damage(path)
    with pytest.raises(InputError, match=message) as err:
        load_model(path)
    assert Path(err.value.path).name == culprit
    assert culprit in str(err.value)


def test_failed_save_leaves_the_previous_pair_intact(saved):
    model, path = saved
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        save_weights(make_model(5), path, metadata={"recipe": object()})
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before
    with pytest.raises(ValueError, match="reserved"):
        save_weights(model, path, metadata={"sha256": "x"})


def test_shipped_adapters_are_listed_and_resolved(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "ASSETS_DIR", tmp_path / "assets")
    assert list_shipped_adapters() == {}
    root = tmp_path / "assets" / "adapters"
    for name in ("headneck-ct", "liver-mr"):
        (root / name).mkdir(parents=True)
        (root / name / "adapter_config.json").write_text("{}")
    (root / "not-an-adapter").mkdir()
    shipped = list_shipped_adapters()
    assert shipped == {"headneck-ct": root / "headneck-ct", "liver-mr": root / "liver-mr"}
    assert resolve_adapter("headneck-ct") == root / "headneck-ct"

    mine = tmp_path / "runs" / "my-adapter"
    mine.mkdir(parents=True)
    assert resolve_adapter(mine) == mine
    assert resolve_adapter(str(mine)) == mine

    with pytest.raises(InputError, match="no adapter named 'kidney'.*headneck-ct, liver-mr"):
        resolve_adapter("kidney")
    with pytest.raises(InputError, match="adapter folder not found") as err:
        resolve_adapter(tmp_path / "nowhere")
    assert err.value.path == str(tmp_path / "nowhere")


def test_shipped_adapter_was_made_by_its_recipe():
    """configs/lora_headneck.yaml (scripts/train_headneck.sh) is the recipe of the shipped
    head-and-neck adapter: the same LoRA settings and the same schedule and data, so changing
    one without the other fails here."""
    from core.config import load_config
    from core.lora import lora_settings, read_adapter_info, settings_differences
    from core.weights import resolve_adapter

    cfg = load_config(Path(__file__).parents[1] / "configs" / "lora_headneck.yaml", [])
    info = read_adapter_info(resolve_adapter("headneck-ct"))
    settings = cfg.lora.adapter_settings()
    wanted = lora_settings(**settings)
    trained = info["training"]
    # What peft saved, and the training config recorded with it.
    assert settings_differences(wanted, info["lora"]) == []
    recorded = lora_settings(**{k: trained["lora"][k] for k in settings})
    assert settings_differences(wanted, recorded) == []
    for key in (
        "epochs",
        "steps_per_epoch",
        "batch_size",
        "learning_rate",
        "warmup_steps",
        "lr_schedule",
        "val_cases",
    ):
        assert trained["training"][key] == getattr(cfg.training, key), key
    assert trained["data"]["val_fraction"] == cfg.data.val_fraction
    assert trained["data"]["classes"] == cfg.data.classes
    assert info["epoch"] <= cfg.training.epochs


def test_shipped_adapter_is_addressable_by_name_and_matches_the_base():
    from core.clicks import Click, PromptSet
    from core.engine import Reconstructor
    from core.lora import read_adapter_info
    from core.synthetic import make_heart_phantom
    from core.weights import list_shipped_adapters, read_weights_info, shipped_base_path

    adapters = list_shipped_adapters()
    assert "headneck-ct" in adapters
    info = read_adapter_info(adapters["headneck-ct"])
    assert info["base_hash"] == read_weights_info(shipped_base_path())["sha256"]
    assert info["trainable_fraction"] < 0.02
    train_cases = set(info["data"]["train_cases"]) | set(info["data"].get("val_cases", []))
    assert train_cases and not any(c in train_cases for c in ("pt_201", "pt_233"))  # val set
    image, label = make_heart_phantom(3)
    rec = Reconstructor.from_pretrained(adapter="headneck-ct")
    prompts = PromptSet((Click(2, 32, 32, 32),))
    with_adapter = rec.predict(image, prompts, mesh=False).cube_probability
    rec.set_adapter(None)  # back to the bare base without reloading it
    bare = rec.predict(image, prompts, mesh=False).cube_probability
    assert rec.name == "base" and not np.allclose(with_adapter, bare)
