"""LoRA adaptation of :class:`~core.model.Sam3DMed` through peft.

Users adapt the shipped base to their anatomy by training low-rank updates of the transformer
linears (:data:`core.model.LORA_TARGETS`; optionally also of the encoders' first convolutions,
:data:`core.model.LORA_CONV_TARGETS`) plus a fresh copy of the occupancy head
(``decoder.head``); the base stays frozen and is shared by every adapter.

An adapter folder holds exactly three files, all safetensors or JSON (never a pickle)::

    adapter_model.safetensors   peft's adapter weights
    adapter_config.json         peft's LoraConfig
    sam3d_adapter.json          ours: base hash, model config, LoRA and training settings,
                                data summary, created time, trainable fraction

and is refused on a base other than the one it was trained on (:func:`base_hash`).

Two peft facts shape this module: ``get_peft_model`` rewrites the module it is given in place
(build a fresh base for references), and peft's ``unload()`` puts the *trained copy* of each
``modules_to_save`` head into the returned model, not the original: :func:`unload_lora`
returns the clean base. ``import peft`` costs seconds, so it happens only when a function
here needs it.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from core.adapter_files import (
    ADAPTER_CONFIG,
    ADAPTER_FORMAT_VERSION,
    ADAPTER_INFO,
    ADAPTER_WEIGHTS,
    read_adapter_info,
)
from core.atomic import write_json
from core.errors import InputError
from core.model import LORA_TARGETS, ModelConfig
from core.weights import weights_hash

if TYPE_CHECKING:
    from peft import PeftModel

__all__ = [
    "ADAPTER_WEIGHTS",
    "ADAPTER_CONFIG",
    "ADAPTER_INFO",
    "apply_lora",
    "trainable_fraction",
    "trainable_report",
    "base_hash",
    "save_adapter",
    "read_adapter_info",
    "load_adapter",
    "unload_lora",
]

_RESERVED = (
    "format_version",
    "adapter_name",
    "base_hash",
    "model",
    "lora",
    "adapter_parameters",
    "total_parameters",
    "trainable_fraction",
    "created",
)


def _is_peft_model(model) -> bool:
    peft = sys.modules.get("peft")  # a PeftModel cannot exist unless peft was imported
    return peft is not None and isinstance(model, peft.PeftModel)


# --------------------------------------------------------------------------------------------
# build


def apply_lora(
    model: nn.Module,
    *,
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    targets: Sequence[str] = LORA_TARGETS,
    modules_to_save: Sequence[str] = ("decoder.head",),
    adapter_name: str = "default",
) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter: the base is frozen, only the LoRA matrices
    and a trainable copy of each ``modules_to_save`` module train.

    ``model`` is rewritten in place (peft injects the LoRA layers into it): keep a separately
    built base for reference outputs. A fresh adapter leaves the outputs unchanged (peft
    initialises B to zero).

    Parameters
    ----------
    model : Sam3DMed (plain, not already wrapped)
    rank, alpha, dropout : LoRA ``r``, ``lora_alpha`` (scale alpha / rank), ``lora_dropout``
    targets : names of the layers to adapt (suffix match, as peft's ``target_modules``): the
        transformer linears (``core.model.LORA_TARGETS``) and, optionally, the encoders'
        first convolutions by full name (``core.model.LORA_CONV_TARGETS``)
    modules_to_save : modules trained in full as a per-adapter copy (the occupancy head)
    adapter_name : peft's name for the adapter
    """
    if _is_peft_model(model):
        raise ValueError(
            "model already has LoRA adapters; build a fresh base (peft rewrites the module "
            "it wraps)"
        )
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if not targets:
        raise ValueError("targets is empty: name at least one layer to adapt")
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        target_modules=list(targets),
        r=int(rank),
        lora_alpha=alpha,
        lora_dropout=dropout,
        modules_to_save=list(modules_to_save) or None,
    )
    return get_peft_model(model, config, adapter_name=adapter_name)


def _counts(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_fraction(model: nn.Module) -> float:
    """Trainable parameters / all parameters of ``model`` (LoRA and head copies included,
    as peft's ``print_trainable_parameters`` counts)."""
    trainable, total = _counts(model)
    return trainable / total if total else 0.0


def trainable_report(model: nn.Module) -> str:
    """One line: ``"trainable 78,352 / 1,721,345 (4.55 %)"``."""
    trainable, total = _counts(model)
    return f"trainable {trainable:,} / {total:,} ({100.0 * trainable / max(total, 1):.2f} %)"


# --------------------------------------------------------------------------------------------
# base identity


def _base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base weights under their plain names, also for a peft-wrapped model: LoRA
    matrices and ``modules_to_save`` copies dropped, ``base_layer`` / ``original_module``
    segments removed."""
    if not _is_peft_model(model):
        return dict(model.state_dict())
    if any(getattr(m, "merged", False) for m in model.modules()):
        raise ValueError(
            "an adapter is merged into the base weights: unmerge it before hashing the base"
        )
    out = {}
    for key, tensor in model.get_base_model().state_dict().items():
        parts = key.split(".")
        if any(p.startswith("lora_") or p == "modules_to_save" for p in parts):
            continue
        name = ".".join(p for p in parts if p not in ("base_layer", "original_module"))
        if name in out:
            raise RuntimeError(f"two peft tensors map to the base name {name!r}")
        out[name] = tensor
    return out


def base_hash(model: nn.Module) -> str:
    """:func:`core.weights.weights_hash` of the base weights.

    For a peft model this is the hash of the underlying base's original weights (LoRA
    matrices and trained head copies excluded), equal to the plain base's hash.
    """
    return weights_hash(_base_state_dict(model))


# --------------------------------------------------------------------------------------------
# save


def lora_settings(*, rank, alpha, dropout, targets, modules_to_save) -> dict:
    """LoRA hyper-parameters in the form ``sam3d_adapter.json`` records them (its ``"lora"``)."""
    return {
        "rank": rank,
        "alpha": alpha,
        "dropout": dropout,
        "targets": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
        "modules_to_save": list(modules_to_save or []),
    }


def settings_differences(wanted: dict, saved: dict) -> list[str]:
    """``"key: wanted vs saved"`` for each :func:`lora_settings` entry that differs (lists of
    module names compared as sets)."""

    def norm(v):
        return sorted(v) if isinstance(v, (list, tuple, set)) else v

    return [
        f"{k}: {wanted[k]!r} vs {saved.get(k)!r}"
        for k in wanted
        if norm(wanted[k]) != norm(saved.get(k))
    ]


def _lora_settings(peft_config) -> dict:
    return lora_settings(
        rank=peft_config.r,
        alpha=peft_config.lora_alpha,
        dropout=peft_config.lora_dropout,
        targets=peft_config.target_modules,
        modules_to_save=peft_config.modules_to_save,
    )


def _check_replaceable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / ADAPTER_INFO).is_file():
        raise InputError(
            out, f"exists, is not empty and holds no {ADAPTER_INFO}: refusing to replace it"
        )


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename a finished folder onto ``out``; an existing ``out`` is moved aside first and
    deleted only once the new one is in place."""
    # mkdtemp/peft create owner-only entries; an adapter is shared like any other file.
    os.chmod(staging, 0o755)
    for f in staging.iterdir():
        os.chmod(f, 0o644)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{out.name}.", dir=out.parent))
        os.replace(out, old)  # onto an empty folder: allowed by rename(2)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _n_tensor_elements(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def save_adapter(
    peft_model: PeftModel,
    out_dir: str | os.PathLike,
    *,
    base_hash: str,
    metadata: dict,
    adapter_name: str = "default",
) -> Path:
    """Write one adapter folder (:data:`ADAPTER_WEIGHTS`, :data:`ADAPTER_CONFIG`,
    :data:`ADAPTER_INFO`), all at once: the folder is built as a hidden sibling and renamed
    into place, so a kill leaves the previous adapter (or none), never half of one.

    Parameters
    ----------
    peft_model : the model from :func:`apply_lora` (or :func:`load_adapter`)
    out_dir : the adapter folder; an existing adapter folder there is replaced, any other
        non-empty folder is refused
    base_hash : :func:`base_hash` of the base it was trained on (checked against the model)
    metadata : JSON-able, stored at the top level of ``sam3d_adapter.json``; conventionally
        ``training`` (training config) and ``data`` (data summary)
    adapter_name : which of the model's adapters to save

    Returns
    -------
    Path of the adapter folder.
    """
    if not _is_peft_model(peft_model):
        raise TypeError(f"save_adapter needs a peft model, got {type(peft_model).__name__}")
    if adapter_name not in peft_model.peft_config:
        raise ValueError(
            f"no adapter named {adapter_name!r}; the model has {list(peft_model.peft_config)}"
        )
    clash = sorted(set(metadata) & set(_RESERVED))
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved by the adapter format")
    actual = weights_hash(_base_state_dict(peft_model))
    if actual != base_hash:
        raise ValueError(
            f"base_hash {base_hash[:16]} is not the hash of this model's base weights "
            f"({actual[:16]}): pass base_hash(model) of the base the adapter was trained on"
        )
    out = Path(out_dir)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    try:
        peft_dir = staging / "_peft"
        peft_model.save_pretrained(
            str(peft_dir), selected_adapters=[adapter_name], safe_serialization=True
        )
        # peft puts a non-default adapter in a subfolder named after it, and adds a README
        src = peft_dir if adapter_name == "default" else peft_dir / adapter_name
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            os.replace(src / name, staging / name)
        shutil.rmtree(peft_dir)

        n_adapter = _n_tensor_elements(staging / ADAPTER_WEIGHTS)
        n_total = sum(p.numel() for p in peft_model.parameters())
        info = {
            "format_version": ADAPTER_FORMAT_VERSION,
            "adapter_name": adapter_name,
            "base_hash": base_hash,
            "model": asdict(peft_model.get_base_model().cfg),
            "lora": _lora_settings(peft_model.peft_config[adapter_name]),
            "adapter_parameters": n_adapter,
            "total_parameters": n_total,
            "trainable_fraction": n_adapter / n_total,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "training": None,
            "data": None,
            **metadata,
        }
        write_json(staging / ADAPTER_INFO, info)
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


# --------------------------------------------------------------------------------------------
# load


def _check_compatible(folder: Path, info: dict, cfg: ModelConfig, loaded_hash: str | None):
    try:
        trained_cfg = ModelConfig.from_dict(info["model"])
    except (TypeError, ValueError) as exc:
        raise InputError(folder / ADAPTER_INFO, f"bad model config ({exc})") from exc
    if trained_cfg != cfg:
        diffs = [
            f"{f.name} {getattr(trained_cfg, f.name)!r} vs {getattr(cfg, f.name)!r}"
            for f in fields(ModelConfig)
            if getattr(trained_cfg, f.name) != getattr(cfg, f.name)
        ]
        raise InputError(
            folder,
            "adapter was trained on a base with another model config (adapter vs loaded: "
            + ", ".join(diffs)
            + ")",
        )
    if loaded_hash is not None and info["base_hash"] != loaded_hash:
        raise InputError(
            folder,
            f"adapter was trained on base {info['base_hash'][:16]}, but the loaded base is "
            f"{loaded_hash[:16]}; load the base weights it was trained on, or pass "
            "check_base=False to apply it anyway",
        )


def _adapter_keys(folder: Path) -> set[str]:
    from safetensors import SafetensorError, safe_open

    path = folder / ADAPTER_WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
    except (SafetensorError, OSError) as exc:
        raise InputError(path, f"corrupt or not a safetensors file ({exc})") from exc
    if not keys:
        raise InputError(path, "holds no tensors")
    return keys


def _load_checked(model: nn.Module, folder: Path, name: str, trainable: bool) -> PeftModel:
    """Load an adapter into a plain base (new PeftModel) or a PeftModel (one more adapter),
    and make sure every tensor of the file found its place (peft loads non-strictly)."""
    from peft import PeftModel
    from safetensors import SafetensorError

    keys = _adapter_keys(folder)  # before touching the model: a corrupt file changes nothing
    wrapped = _is_peft_model(model)
    if wrapped and name in model.peft_config:
        raise ValueError(f"an adapter named {name!r} is already loaded")
    try:
        if wrapped:
            model.load_adapter(str(folder), adapter_name=name, is_trainable=trainable)
            pm = model
        else:
            pm = PeftModel.from_pretrained(
                model, str(folder), adapter_name=name, is_trainable=trainable
            )
    except (SafetensorError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise InputError(folder, f"cannot be loaded into this model ({exc})") from exc

    from peft.utils import get_peft_model_state_dict

    expected = set(get_peft_model_state_dict(pm, adapter_name=name))
    if keys != expected:
        if wrapped:
            pm.delete_adapter(name)
        else:
            unload_lora(pm)
        odd = sorted(keys ^ expected)
        raise InputError(
            folder / ADAPTER_WEIGHTS,
            f"{len(odd)} adapter tensors do not fit this model (e.g. {', '.join(odd[:3])})",
        )
    return pm


def load_adapter(
    base_model: nn.Module,
    adapter_dir: str | os.PathLike,
    *,
    adapter_name: str | None = None,
    check_base: bool = True,
    trainable: bool = False,
) -> PeftModel:
    """Load an adapter folder onto a base model.

    Parameters
    ----------
    base_model : a plain Sam3DMed (rewritten in place, as by :func:`apply_lora`) or a peft
        model, which gets one more adapter
    adapter_dir : folder written by :func:`save_adapter`
    adapter_name : peft's name for it (default ``"default"``)
    check_base : refuse a base whose :func:`base_hash` differs from the one the adapter was
        trained on (the model config must match in any case)
    trainable : keep the adapter trainable (to resume training); else frozen, eval mode

    Raises
    ------
    InputError
        Missing or corrupt files, or a base the adapter was not trained on; names the file.
    """
    folder = Path(adapter_dir)
    info = read_adapter_info(folder)
    base = base_model.get_base_model() if _is_peft_model(base_model) else base_model
    loaded_hash = weights_hash(_base_state_dict(base_model)) if check_base else None
    _check_compatible(folder, info, base.cfg, loaded_hash)
    return _load_checked(base_model, folder, adapter_name or "default", trainable)


def unload_lora(peft_model: PeftModel) -> nn.Module:
    """Remove every adapter and return the clean base (the same module object).

    Unlike peft's ``unload()``, which leaves the trained copy of each ``modules_to_save``
    module in the returned model, the original modules are put back.
    """
    base = peft_model.get_base_model()
    originals = {
        name: mod.original_module
        for name, mod in base.named_modules()
        if hasattr(mod, "original_module") and hasattr(mod, "modules_to_save")
    }
    base = peft_model.unload()
    for name, module in originals.items():
        parent, _, attr = name.rpartition(".")
        setattr(base.get_submodule(parent) if parent else base, attr, module)
    return base
