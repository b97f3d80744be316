"""Model weights on disk: the shipped base, its adapters and the file format.

A weights file is a pair next to each other::

    <name>.safetensors   the model's state dict (safetensors: never unpickled)
    <name>.json          {"format_version": 1, "model": ModelConfig dict,
                          "sha256": weights_hash of the tensors, "trained_on": ..., "recipe": ...}

The JSON is written last, so a pair whose hash does not match its tensors (a kill between the
two writes, a file replaced by hand) is refused with a message instead of loading silently.

The shipped files live in the package folder ``core/assets/`` (``core/weights.py`` is this
module, so the folder cannot be ``core/weights/``): ``base.safetensors`` + ``base.json`` and
LoRA adapters in ``adapters/<name>/`` (see :mod:`core.lora`).

torch and safetensors are imported only by the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from core.atomic import atomic_path, write_json
from core.errors import InputError

if TYPE_CHECKING:
    import torch

    from core.model import Sam3DMed

__all__ = [
    "FORMAT_VERSION",
    "ASSETS_DIR",
    "weights_hash",
    "save_weights",
    "load_model",
    "read_weights_info",
    "shipped_base_path",
    "list_shipped_adapters",
    "resolve_adapter",
]

FORMAT_VERSION = 1
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
_RESERVED = ("format_version", "model", "sha256")
_TRAIN_HINT = (
    "train them with the training recipe and save them there with core.weights.save_weights, "
    "or pass the path of a weights file"
)


# --------------------------------------------------------------------------------------------
# hashing


def weights_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the sorted tensor names, dtypes, shapes and bytes of a state dict.

    Stable across save/load (it sees the tensors, not the file) and independent of the
    device the tensors are on.

    Parameters
    ----------
    state_dict : mapping of name -> tensor

    Returns
    -------
    64 hex characters
    """
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# paths


def _pair(path: str | os.PathLike) -> tuple[Path, Path]:
    """``x.safetensors``, ``x.json`` or ``x`` -> (x.safetensors, x.json)."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def shipped_base_path() -> Path:
    """Where the shipped base weights live (``core/assets/base.safetensors``); may not exist."""
    return ASSETS_DIR / "base.safetensors"


def list_shipped_adapters() -> dict[str, Path]:
    """Shipped LoRA adapters by name (folders of ``core/assets/adapters/`` holding one)."""
    root = ASSETS_DIR / "adapters"
    if not root.is_dir():
        return {}
    return {
        d.name: d
        for d in sorted(root.iterdir())
        if d.is_dir() and (d / "adapter_config.json").is_file()
    }


def resolve_adapter(name_or_path: str | os.PathLike) -> Path:
    """A shipped adapter's name (``"headneck-ct"``) or an adapter folder -> the folder.

    A bare name (no path separator) is looked up among the shipped adapters first, then as a
    folder relative to the working directory; anything path-like is a folder.

    Raises
    ------
    InputError
        Neither a folder nor a shipped adapter; the message lists the shipped names.
    """
    text = os.fspath(name_or_path)
    shipped = list_shipped_adapters()
    is_bare_name = isinstance(name_or_path, str) and not any(
        sep in text for sep in ("/", "\\", os.sep)
    )
    if is_bare_name and text in shipped:
        return shipped[text]
    path = Path(text)
    if path.is_dir():
        return path
    available = ", ".join(shipped) if shipped else "none"
    if is_bare_name:
        raise InputError(
            None,
            f"no adapter named {text!r}: not a shipped adapter and not a folder "
            f"(shipped adapters: {available})",
        )
    raise InputError(path, f"adapter folder not found (shipped adapters: {available})")


# --------------------------------------------------------------------------------------------
# save / load


def _is_peft_model(model) -> bool:
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def save_weights(model: Sam3DMed, path: str | os.PathLike, *, metadata: dict) -> Path:
    """Write ``<name>.safetensors`` + ``<name>.json`` atomically.

    Parameters
    ----------
    model : Sam3DMed
        A plain model (a LoRA model: save its adapter with :func:`core.lora.save_adapter`, or
        merge it first with :meth:`core.adapters.AdapterManager.merge`).
    path : ``<name>``, ``<name>.safetensors`` or ``<name>.json``
    metadata : dict
        JSON-able provenance stored at the top level of the JSON, conventionally
        ``trained_on`` (data summary) and ``recipe`` (training config); both default to None.

    Returns
    -------
    Path of the ``.safetensors`` file.
    """
    from core.model import ModelConfig

    if _is_peft_model(model):
        raise TypeError(
            "save_weights takes a plain Sam3DMed, got a peft model: save its adapter with "
            "core.lora.save_adapter, or merge it first (AdapterManager.merge)"
        )
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"save_weights needs a Sam3DMed (with .cfg), got {type(model).__name__}")
    clash = sorted(set(metadata) & set(_RESERVED))
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved by the weights format")
    from dataclasses import asdict

    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    st_path, json_path = _pair(path)
    info = {
        "format_version": FORMAT_VERSION,
        "model": asdict(cfg),
        "sha256": weights_hash(tensors),
        "trained_on": None,
        "recipe": None,
        **metadata,
    }
    # The JSON is serialised first (bad metadata writes nothing) and renamed into place last:
    # a kill in between leaves new tensors next to an old JSON, which the hash check refuses.
    with atomic_path(json_path, suffix=".json") as tmp_json:
        write_json(tmp_json, info)
        with atomic_path(st_path, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
    return st_path


def read_weights_info(path: str | os.PathLike) -> dict:
    """The JSON next to a weights file, validated (format version, model config present).

    Raises
    ------
    InputError
        Missing, unreadable or not our format; the message names the file.
    """
    _, json_path = _pair(path)
    if not json_path.is_file():
        raise InputError(
            json_path,
            "weights metadata file not found (it sits next to the "
            ".safetensors file and holds the model config)",
        )
    try:
        info = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(json_path, f"not readable JSON ({exc})") from exc
    if not isinstance(info, dict) or not isinstance(info.get("model"), dict):
        raise InputError(json_path, "not a sam3d weights file: no 'model' config")
    version = info.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise InputError(json_path, f"bad format_version {version!r}")
    if version > FORMAT_VERSION:
        raise InputError(
            json_path,
            f"format_version {version} is newer than this sam3d-napari reads "
            f"({FORMAT_VERSION}); upgrade sam3d-napari",
        )
    if not isinstance(info.get("sha256"), str):
        raise InputError(json_path, "no 'sha256' of the tensors")
    return info


def load_model(path: str | os.PathLike | None = None, *, device: str = "cpu") -> Sam3DMed:
    """Build a :class:`~core.model.Sam3DMed` from a weights file, in eval mode.

    Parameters
    ----------
    path : ``<name>``, ``<name>.safetensors`` or ``<name>.json``; a full training run's
        ``.pt`` checkpoint (``best.pt``); None: the shipped base
    device : torch device for the returned model

    Raises
    ------
    InputError
        A missing, corrupt or mismatched file (tensors that do not match the config or the
        recorded hash); the message names the file.
    """
    if path is None:
        path = shipped_base_path()
        if not path.is_file():
            raise InputError(None, f"shipped base weights not found at {path}; {_TRAIN_HINT}")
    if Path(path).is_dir():
        raise InputError(path, "is a folder; pass the weights' .safetensors file")
    if Path(path).suffix == ".pt":
        return _model_of_checkpoint(Path(path), device)
    st_path, json_path = _pair(path)
    if not st_path.is_file():
        raise InputError(st_path, "weights file not found")
    info = read_weights_info(st_path)

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from core.model import ModelConfig, Sam3DMed

    try:
        cfg = ModelConfig.from_dict(info["model"])
    except (TypeError, ValueError) as exc:
        raise InputError(json_path, f"bad model config ({exc})") from exc
    try:
        tensors = load_file(str(st_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(st_path, f"corrupt or not a safetensors file ({exc})") from exc

    model = Sam3DMed(cfg)
    _check_tensors(model, tensors, st_path)
    if weights_hash(tensors) != info["sha256"]:
        raise InputError(
            st_path,
            f"tensors do not match the sha256 recorded in {json_path.name} (file corrupt, "
            "half-written or replaced without its JSON)",
        )
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval()


def _model_of_checkpoint(path: Path, device: str) -> Sam3DMed:
    """The model of a full training run's ``.pt`` checkpoint (``best.pt``, ``last.pt``;
    read with ``weights_only=True``); a LoRA run's checkpoint names its adapter instead."""
    from core.checkpoint import load_checkpoint
    from core.model import ModelConfig, Sam3DMed

    if not path.is_file():
        raise InputError(path, "checkpoint file not found")
    try:
        ckpt = load_checkpoint(path)
    except ValueError as exc:
        raise InputError(path, str(exc).removeprefix(f"{path}: ")) from None
    if ckpt["config"].get("lora", {}).get("enabled"):
        folder = path.parent / ("adapter_last" if path.stem == "last" else "adapter_best")
        raise InputError(
            path,
            f"a LoRA run's checkpoint: its weights are the adapter {folder} on the base it "
            "was trained on (give that folder as the adapter, the base as the weights)",
        )
    try:
        model = Sam3DMed(ModelConfig.from_dict(ckpt["config"]["model"]))
        model.load_state_dict(ckpt["model"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(path, f"weights do not fit the model it records ({exc})") from None
    return model.to(device).eval()


def _check_tensors(model, tensors: Mapping, st_path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise InputError(st_path, "tensor names do not match the model config: " + "; ".join(parts))
    bad = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise InputError(
            st_path,
            f"{len(bad)} tensor shapes do not match the model config (file vs config): "
            + ", ".join(bad[:3]),
        )
