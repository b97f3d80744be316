"""LoRA through peft: peft's own invariants on the tiny model, our adapter format, switching.

Mirrors huggingface/peft tests/test_custom_models.py (``test_only_params_are_updated``,
save/load and merge round trips) on Sam3DMed. peft rewrites the module it wraps, so every
reference output comes from a separately built base with the same seed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_weights import TINY, assert_same_outputs, make_batch, make_model, outputs

import core.lora as L
from core.adapters import AdapterManager
from core.errors import InputError
from core.lora import (
    ADAPTER_CONFIG,
    ADAPTER_INFO,
    ADAPTER_WEIGHTS,
    apply_lora,
    base_hash,
    load_adapter,
    save_adapter,
    trainable_fraction,
    trainable_report,
    unload_lora,
)
from core.model import LORA_CONV_TARGETS, LORA_TARGETS, ModelConfig, Sam3DMed
from core.weights import save_weights, weights_hash

BASE_SEED = 0


def loss_of(out: dict) -> torch.Tensor:
    return sum((v.float() ** 2).mean() for v in out.values())


def train(model, batch, steps: int = 3, lr: float = 1e-2):
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model(batch)).backward()
        opt.step()
    return model.eval()


def trained_adapter(seed: int, *, adapter_name: str = "default", rank: int = 4):
    """A LoRA adapter on the base, trained a few steps on a seed-dependent batch."""
    pm = apply_lora(make_model(BASE_SEED), rank=rank, adapter_name=adapter_name)
    torch.manual_seed(seed)
    return train(pm, make_batch(seed=seed))


@pytest.fixture(scope="module")
def batch():
    return make_batch(seed=7)


@pytest.fixture(scope="module")
def base_ref(batch):
    return outputs(make_model(BASE_SEED), batch)


@pytest.fixture(scope="module")
def h0():
    return weights_hash(make_model(BASE_SEED).state_dict())


def save(pm, path, h0, adapter_name="default"):
    return save_adapter(
        pm,
        path,
        base_hash=h0,
        metadata={"training": {"steps": 3, "lr": 1e-2}, "data": {"cases": 2}},
        adapter_name=adapter_name,
    )


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory, batch, h0):
    """Two adapters saved to disk with the outputs each gave before saving."""
    root = tmp_path_factory.mktemp("adapters")
    made = {}
    for name, seed in (("liver", 1), ("kidney", 2)):
        pm = trained_adapter(seed, adapter_name=name)
        made[name] = (save(pm, root / name, h0, adapter_name=name), outputs(pm, batch))
    return made


# --------------------------------------------------------------------------------------------
# peft invariants


def test_fresh_adapter_leaves_outputs_unchanged(batch, base_ref, h0):
    pm = apply_lora(make_model(BASE_SEED)).eval()
    assert_same_outputs(outputs(pm, batch), base_ref)
    assert base_hash(pm) == h0


def test_only_adapter_and_head_parameters_change(batch, h0):
    pm = apply_lora(make_model(BASE_SEED), rank=4, dropout=0.1)
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all(
        ".lora_A." in n or ".lora_B." in n or "decoder.head.modules_to_save." in n
        for n in trainable
    )
    assert any("decoder.head.modules_to_save.default.weight" in n for n in trainable)
    n_linears = sum(
        1 for n, m in make_model().named_modules() if n.rsplit(".", 1)[-1] in LORA_TARGETS
    )
    assert sum(".lora_A." in n for n in trainable) == n_linears == 7  # every target adapted

    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    train(pm, batch, steps=3)
    for n, p in pm.named_parameters():
        if n in trainable:
            assert not torch.equal(p, before[n]), f"{n} did not train"
        else:
            assert torch.equal(p, before[n]), f"base parameter {n} changed"
    assert base_hash(pm) == h0  # the base under the adapter is the one it started from


def test_trainable_report_format():
    pm = apply_lora(make_model(), rank=8)
    assert re.fullmatch(r"trainable [\d,]+ / [\d,]+ \(\d+\.\d\d %\)", trainable_report(pm))
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    assert f"trainable {trainable:,} / " in trainable_report(pm)


def _lora_params(cfg: ModelConfig, rank: int) -> int:
    """r * (in + out) per adapted linear, plus the trained head copy."""
    model = Sam3DMed(cfg)
    lora = sum(
        rank * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if n.rsplit(".", 1)[-1] in LORA_TARGETS
    )
    return lora + sum(p.numel() for p in model.decoder.head.parameters())


@pytest.mark.parametrize("rank", [4, 8, 16])
def test_trainable_parameters_are_exactly_lora_and_head(rank):
    cfg = ModelConfig()
    n_base = Sam3DMed(cfg).n_parameters()
    pm = apply_lora(Sam3DMed(cfg), rank=rank)
    expected = _lora_params(cfg, rank)
    assert sum(p.numel() for p in pm.parameters() if p.requires_grad) == expected
    assert trainable_fraction(pm) == pytest.approx(expected / (n_base + expected))


def test_default_lora_settings_train_under_2_percent_of_the_default_model():
    from core.config import LoraSection

    model = apply_lora(Sam3DMed(ModelConfig()), **LoraSection().adapter_settings())
    assert 0.01 < trainable_fraction(model) < 0.02
    # Rank 8 on all six targets is well above: the reason for the defaults.
    assert trainable_fraction(apply_lora(Sam3DMed(ModelConfig()), rank=8)) > 0.04


def test_conv_targets_adapt_the_encoders_first_convolutions(tmp_path, batch, base_ref, h0):
    """LoRA on the encoders' convolutions (with the attention): exactly r * (in * k + out)
    parameters per convolution train, nothing of the base changes, and the adapter survives
    saving, loading into a fresh base and merging."""
    targets = ("to_qkv", *LORA_CONV_TARGETS)
    pm = apply_lora(make_model(BASE_SEED), rank=2, targets=targets)
    # B starts at zero: the base's outputs, to float rounding (peft's wrapped 3D convs run
    # torch's own conv, the plain base core.model.conv3d's oneDNN call)
    fresh = outputs(pm.eval(), batch)
    for k in base_ref:
        torch.testing.assert_close(fresh[k], base_ref[k], rtol=0, atol=1e-5)
    modules = dict(make_model().named_modules())
    convs = [modules[n] for n in LORA_CONV_TARGETS]
    assert all(isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) for m in convs)
    n_conv = sum(2 * (m.weight[0].numel() + m.out_channels) for m in convs)
    n_qkv = sum(
        2 * (m.in_features + m.out_features) for n, m in modules.items() if n.endswith("to_qkv")
    )
    n_head = sum(p.numel() for p in modules["decoder.head"].parameters())
    assert sum(p.numel() for p in pm.parameters() if p.requires_grad) == n_conv + n_qkv + n_head

    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    torch.manual_seed(4)
    train(pm, make_batch(seed=4))
    for n, p in pm.named_parameters():
        if ".lora_" in n and any(t in n for t in LORA_CONV_TARGETS):
            assert not torch.equal(p, before[n]), f"{n} did not train"
        if not p.requires_grad:
            assert torch.equal(p, before[n]), f"base parameter {n} changed"
    expected = outputs(pm, batch)
    with pytest.raises(AssertionError):
        assert_same_outputs(expected, base_ref)

    folder = save(pm, tmp_path / "conv", h0)
    info = json.loads((folder / ADAPTER_INFO).read_text())
    assert info["lora"]["targets"] == sorted(targets)
    reloaded = load_adapter(make_model(BASE_SEED), folder)
    torch.testing.assert_close(outputs(reloaded, batch), expected, rtol=0, atol=1e-6)
    mgr = AdapterManager(make_model(BASE_SEED))
    mgr.load(folder)
    merged = mgr.merge(mgr.names[0])
    assert set(merged.state_dict()) == set(make_model().state_dict())
    torch.testing.assert_close(outputs(merged, batch), expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# adapter files


def test_save_load_round_trip_into_a_fresh_base(tmp_path, batch, h0, monkeypatch):
    pm = trained_adapter(1)
    expected = outputs(pm, batch)
    folder = save(pm, tmp_path / "ad", h0)

    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [ADAPTER_WEIGHTS, ADAPTER_CONFIG, ADAPTER_INFO]
    )
    assert not [p for p in tmp_path.iterdir() if p.name != "ad"]  # no staging leftovers
    info = json.loads((folder / ADAPTER_INFO).read_text())
    assert info["base_hash"] == h0
    assert info["model"] == json.loads(TINY.to_json())
    assert info["lora"]["rank"] == 4 and info["lora"]["modules_to_save"] == ["decoder.head"]
    assert info["lora"]["targets"] == sorted(LORA_TARGETS)
    assert info["trainable_fraction"] == pytest.approx(trainable_fraction(pm))
    assert info["training"] == {"steps": 3, "lr": 1e-2} and info["data"] == {"cases": 2}
    assert info["created"].endswith("+00:00")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load / pickle called")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr("pickle.load", refuse)
    reloaded = load_adapter(make_model(BASE_SEED), folder)
    assert_same_outputs(outputs(reloaded, batch), expected)
    assert not any(p.requires_grad for p in reloaded.parameters())
    resumed = load_adapter(make_model(BASE_SEED), folder, trainable=True)
    assert trainable_fraction(resumed) == pytest.approx(info["trainable_fraction"])


def test_saving_replaces_an_adapter_whole_and_refuses_other_folders(tmp_path, batch, h0):
    first, second = trained_adapter(1), trained_adapter(2)
    folder = save(first, tmp_path / "ad", h0)
    save(second, folder, h0)
    assert [p.name for p in tmp_path.iterdir()] == ["ad"]
    assert_same_outputs(
        outputs(load_adapter(make_model(BASE_SEED), folder), batch), outputs(second, batch)
    )

    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(InputError, match="refusing to replace it"):
        save(first, other, h0)
    assert (other / "todo.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="is not the hash of this model's base"):
        save_adapter(first, tmp_path / "x", base_hash="0" * 64, metadata={})
    with pytest.raises(ValueError, match="reserved"):
        save_adapter(first, tmp_path / "x", base_hash=h0, metadata={"base_hash": h0})
    assert not (tmp_path / "x").exists()


def test_a_kill_while_saving_leaves_the_previous_adapter(tmp_path, batch, h0, monkeypatch):
    first = trained_adapter(1)
    folder = save(first, tmp_path / "ad", h0)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(L, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        save(trained_adapter(2), folder, h0)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ad"]


def test_mismatched_base_is_refused_with_both_hashes(two_adapters):
    folder = two_adapters["liver"][0]
    other = make_model(BASE_SEED + 1)
    h_other = weights_hash(other.state_dict())
    h_trained = json.loads((folder / ADAPTER_INFO).read_text())["base_hash"]
    with pytest.raises(InputError) as err:
        load_adapter(other, folder)
    msg = str(err.value)
    assert msg.startswith(str(folder))
    assert f"adapter was trained on base {h_trained[:16]}, but the loaded base is " in msg
    assert h_other[:16] in msg
    assert not any("lora" in n for n, _ in other.named_modules())  # refused before touching
    load_adapter(other, folder, check_base=False)  # an explicit override still works

    bigger = ModelConfig(**{**json.loads(TINY.to_json()), "dim": 64})
    with pytest.raises(InputError, match="another model config .*dim 32 vs 64"):
        load_adapter(Sam3DMed(bigger), folder, check_base=False)


@pytest.mark.parametrize("name", [ADAPTER_WEIGHTS, ADAPTER_CONFIG, ADAPTER_INFO])
def test_missing_adapter_file_is_named(tmp_path, name, h0):
    folder = save(trained_adapter(1), tmp_path / "ad", h0)
    (folder / name).unlink()
    with pytest.raises(InputError, match="missing from the adapter folder") as err:
        load_adapter(make_model(BASE_SEED), folder)
    assert err.value.path == str(folder / name)
    with pytest.raises(InputError, match="adapter folder not found"):
        load_adapter(make_model(BASE_SEED), tmp_path / "nowhere")


def test_corrupt_adapter_is_refused_before_touching_the_base(tmp_path, h0):
    folder = save(trained_adapter(1), tmp_path / "ad", h0)
    (folder / ADAPTER_WEIGHTS).write_bytes(b"\x00not safetensors" * 8)
    base = make_model(BASE_SEED)
    with pytest.raises(InputError, match="corrupt") as err:
        load_adapter(base, folder)
    assert err.value.path == str(folder / ADAPTER_WEIGHTS)
    assert not any("lora" in n for n, _ in base.named_modules())


def test_save_weights_refuses_a_peft_model(tmp_path):
    with pytest.raises(TypeError, match="save_adapter"):
        save_weights(apply_lora(make_model()), tmp_path / "w", metadata={})


# --------------------------------------------------------------------------------------------
# engine: one base, many adapters


def test_switching_adapters_never_reloads_the_base(tmp_path, two_adapters, batch, base_ref):
    weights = save_weights(make_model(BASE_SEED), tmp_path / "base", metadata={})
    loads = []

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    import core.adapters as A

    real_load, A.load_model = A.load_model, counting_load
    try:
        mgr = AdapterManager.from_weights(weights)
    finally:
        A.load_model = real_load
    base = mgr.model
    assert_same_outputs(outputs(mgr, batch), base_ref)

    for name, (folder, _) in two_adapters.items():
        assert mgr.load(folder) == name
    assert mgr.names == ("liver", "kidney") and mgr.active is None
    assert_same_outputs(outputs(mgr, batch), base_ref)  # loading does not activate

    for name in ("liver", "kidney", "liver"):
        mgr.activate(name)
        assert mgr.active == name
        torch.testing.assert_close(outputs(mgr, batch), two_adapters[name][1], rtol=0, atol=1e-6)
        assert mgr.model.get_base_model() is base
    mgr.deactivate()
    assert_same_outputs(outputs(mgr, batch), base_ref)
    assert len(loads) == 1
    assert not any(p.requires_grad for p in mgr.model.parameters())

    mgr.activate("kidney")
    mgr.remove("kidney")
    assert mgr.names == ("liver",) and mgr.active is None
    assert_same_outputs(outputs(mgr, batch), base_ref)
    with pytest.raises(KeyError, match="'kidney' is not loaded"):
        mgr.activate("kidney")


def test_merged_copy_equals_unmerged(two_adapters, batch):
    mgr = AdapterManager(make_model(BASE_SEED))
    for folder, _ in two_adapters.values():
        mgr.load(folder)
    mgr.activate("kidney")
    merged = mgr.merge("liver")
    assert type(merged) is Sam3DMed
    assert set(merged.state_dict()) == set(make_model().state_dict())
    torch.testing.assert_close(outputs(merged, batch), two_adapters["liver"][1], rtol=0, atol=1e-5)
    assert mgr.active == "kidney"  # the manager is unchanged
    torch.testing.assert_close(outputs(mgr, batch), two_adapters["kidney"][1], rtol=0, atol=1e-6)


def test_unload_returns_the_clean_base(two_adapters, batch, base_ref, h0):
    base = make_model(BASE_SEED)
    mgr = AdapterManager(base)
    for folder, _ in two_adapters.values():
        mgr.load(folder)
    mgr.activate("liver")
    clean = mgr.unload()
    assert clean is base and type(clean.decoder.head) is torch.nn.Conv3d
    assert weights_hash(clean.state_dict()) == h0
    assert all(p.requires_grad for p in clean.parameters())
    assert_same_outputs(outputs(clean, batch), base_ref)
    assert mgr.names == () and mgr.model is base


def test_peft_unload_alone_would_keep_the_trained_head(two_adapters, h0):
    """Why unload_lora exists: peft's unload() returns the trained head copy."""
    pm = load_adapter(make_model(BASE_SEED), two_adapters["liver"][0])
    assert weights_hash(pm.unload().state_dict()) != h0
    pm = load_adapter(make_model(BASE_SEED), two_adapters["liver"][0])
    assert weights_hash(unload_lora(pm).state_dict()) == h0


def test_reconstructor_keys_adapters_by_path_and_write_time(tmp_path, two_adapters, batch):
    """Two runs' ``adapter_best`` folders never shadow each other; an adapter retrained in
    place (a resumed run) is loaded again, not served stale from memory."""
    import os
    import shutil

    from core.engine import Reconstructor

    a = tmp_path / "run_a" / "adapter_best"
    b = tmp_path / "run_b" / "adapter_best"
    shutil.copytree(two_adapters["liver"][0], a)
    shutil.copytree(two_adapters["kidney"][0], b)
    liver, kidney = two_adapters["liver"][1], two_adapters["kidney"][1]
    rec = Reconstructor(make_model(BASE_SEED))

    def check(expected):
        torch.testing.assert_close(outputs(rec.model, batch), expected, rtol=0, atol=1e-5)

    rec.set_adapter(a)
    check(liver)
    rec.set_adapter(b)
    assert rec.name == "adapter_best"
    check(kidney)  # b's weights, not a's under the same folder name
    rec.set_adapter(a)
    check(liver)
    assert len(rec.merged) == 2  # already merged: not merged twice

    # retrain a in place: b's weights written over it, later
    weights = next(a.glob("*.safetensors"))
    shutil.copy(next(b.glob("*.safetensors")), weights)
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rec.set_adapter(a)
    check(kidney)
    assert len(rec.merged) == 2  # a's stale copy was replaced, not kept beside the new one
    rec.set_adapter(None)
    assert rec.name == "base"
    assert rec.model is rec.base_model and type(rec.model) is Sam3DMed  # no peft layers left
    assert weights_hash(rec.base_model.state_dict()) == weights_hash(
        make_model(BASE_SEED).state_dict()
    )  # merging left the base's own weights alone


# --------------------------------------------------------------------------------------------
# the shipped recipe: GroupNorm copies next to the head


def test_an_adapter_used_on_another_modality_than_it_was_trained_on_warns(tmp_path, two_adapters):
    """An MR adapter run with CT normalisation sees intensities it never learned: the result
    says which modality to choose; with the adapter's own modality, or the base, it is quiet."""
    import shutil

    from conftest import two_organs

    from core.clicks import Click, PromptSet
    from core.engine import Reconstructor
    from core.io import Volume

    folder = tmp_path / "mr_adapter"
    shutil.copytree(two_adapters["liver"][0], folder)
    info = json.loads((folder / ADAPTER_INFO).read_text())
    info["training"] = {"data": {"modality": "mr"}}
    (folder / ADAPTER_INFO).write_text(json.dumps(info))
    img, _ = two_organs()
    img[0] = -1000.0  # air: a CT in HU
    volume = Volume(img, np.diag([2.0, 2.0, 3.0, 1.0]))
    prompts = PromptSet((Click(2, 10, 9, 11),))
    rec = Reconstructor(make_model(BASE_SEED))
    rec.set_adapter(folder)
    assert rec.trained_modality == "mr"
    assert rec.predict(volume, prompts, modality="mr", mesh=False).warnings == ()
    (note,) = rec.predict(volume, prompts, modality="ct", mesh=False).warnings
    assert "mr_adapter was trained on MR" in note and "choose the MR modality" in note
    rec.set_adapter(None)
    assert rec.predict(volume, prompts, modality="ct", mesh=False).warnings == ()


def _norm_names() -> tuple[str, ...]:
    """The GroupNorms the head-and-neck recipe trains (configs/lora_headneck.yaml)."""
    from core.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "configs" / "lora_headneck.yaml", [])
    names = tuple(n for n in cfg.lora.modules_to_save if n != "decoder.head")
    modules = dict(make_model(BASE_SEED).named_modules())
    assert names and all(isinstance(modules[n], torch.nn.GroupNorm) for n in names)
    return names


def test_adapters_with_norm_copies_switch_merge_and_unload(tmp_path, two_adapters, batch,
                                                           base_ref, h0):  # fmt: skip
    norms = _norm_names()
    pm = apply_lora(make_model(BASE_SEED), rank=4, adapter_name="hn",
                    modules_to_save=("decoder.head", *norms))  # fmt: skip
    torch.manual_seed(3)
    pm = train(pm, make_batch(seed=3))
    trained = dict(pm.named_parameters())
    for n in norms:  # the copies trained, the originals did not
        assert not torch.equal(trained[f"base_model.model.{n}.modules_to_save.hn.weight"],
                               trained[f"base_model.model.{n}.original_module.weight"])  # fmt: skip
    expected = outputs(pm, batch)
    folder = save(pm, tmp_path / "hn", h0, adapter_name="hn")
    assert json.loads((folder / ADAPTER_INFO).read_text())["lora"]["modules_to_save"] == [
        "decoder.head",
        *norms,
    ]

    base = make_model(BASE_SEED)
    mgr = AdapterManager(base)
    mgr.load(folder)
    mgr.load(two_adapters["liver"][0])  # head only: its norms are the base's
    for name in ("hn", "liver", "hn"):
        mgr.activate(name)
        want = expected if name == "hn" else two_adapters["liver"][1]
        torch.testing.assert_close(outputs(mgr, batch), want, rtol=0, atol=1e-6)
    mgr.deactivate()
    assert_same_outputs(outputs(mgr, batch), base_ref)
    torch.testing.assert_close(outputs(mgr.merge("hn"), batch), expected, rtol=0, atol=1e-5)
    mgr.activate("hn")
    clean = mgr.unload()
    assert clean is base and weights_hash(clean.state_dict()) == h0
    assert all(type(m) is torch.nn.GroupNorm for n, m in clean.named_modules() if n in norms)


def test_reconstructor_refuses_a_peft_model_and_says_how_to_load_adapters():
    from core.engine import Reconstructor

    pm = trained_adapter(1)
    with pytest.raises(TypeError, match=r"not a peft model.*set_adapter"):
        Reconstructor(pm)
