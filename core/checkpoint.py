"""Checkpoints (``.pt``, for resuming) and shipped weights (``.safetensors`` + ``.json``).

Both are written atomically (``core.atomic.atomic_path``): a run killed mid-write leaves the
previous file intact. Nothing here unpickles arbitrary objects: ``.pt`` files are read with
``torch.load(..., weights_only=True)``, so a checkpoint holds only tensors and plain Python
values (RNG states are stored as tensors, the config as a JSON string).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from core.atomic import atomic_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "save_weights_safetensors",
    "load_weights",
    "weights_config_path",
]

CHECKPOINT_FORMAT = "sam3d-checkpoint-v1"


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model_state: dict,
    optimizer_state: dict | None,
    scheduler_state: dict | None,
    step: int,
    epoch: int,
    config_dict: dict,
    extra: dict | None = None,
) -> Path:
    """Write a training checkpoint atomically.

    Parameters
    ----------
    path : target ``.pt`` file
    model_state, optimizer_state : ``state_dict()`` of the model and optimizer
    scheduler_state : the LR schedule's state (plain values)
    step : optimizer steps done
    epoch : epochs completed
    config_dict : ``TrainConfig.to_dict()``; stored as a JSON string
    extra : tensors and plain values only (RNG states from :func:`rng_state`, history, ...)
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": model_state,
        "optimizer": optimizer_state,
        "scheduler": scheduler_state,
        "step": int(step),
        "epoch": int(epoch),
        "config_json": json.dumps(config_dict),
        "extra": extra or {},
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Returns the payload with ``config`` (a dict) added from the stored JSON.

    Raises
    ------
    ValueError
        The file is missing, or is not a sam3d checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, a pickle with code, a foreign format
        raise ValueError(f"{path}: not a readable sam3d checkpoint ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a sam3d checkpoint ({CHECKPOINT_FORMAT})")
    payload["config"] = json.loads(payload["config_json"])
    return payload


# --------------------------------------------------------------------------------------------
# RNG state as tensors and plain values


def rng_state() -> dict:
    """The state of torch's (CPU and CUDA), numpy's global and Python's RNGs, in a form that
    ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - saved, not used
    version, internal, gauss_next = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.cpu() for t in cuda])


# --------------------------------------------------------------------------------------------
# Shipped weights: safetensors + JSON (the format of ``core.weights``)


def weights_config_path(path: str | os.PathLike) -> Path:
    """``base.safetensors`` -> ``base.json``: the model config (and hash) beside the weights."""
    return Path(path).with_suffix(".json")


def save_weights_safetensors(model, path: str | os.PathLike, config, *, metadata=None) -> Path:
    """Write a model's weights in the shipped format (``core.weights.save_weights``):
    ``<name>.safetensors`` plus ``<name>.json`` with the model config and a hash, atomically.

    Parameters
    ----------
    model : a plain ``Sam3DMed`` (a LoRA model: save its adapter instead)
    path : target ``.safetensors`` file
    config : the model's ``ModelConfig`` (checked against ``model.cfg``)
    metadata : JSON-able provenance, conventionally ``recipe`` (training config) and
        ``trained_on`` (data summary)
    """
    from core.weights import save_weights

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: weights file must end in .safetensors")
    if getattr(model, "cfg", None) != config:
        raise ValueError(f"{path}: the model's own config differs from the config given")
    return save_weights(model, path, metadata=dict(metadata or {}))


def load_weights(path: str | os.PathLike, map_location="cpu"):
    """Read model weights and their ``ModelConfig`` (through :func:`core.weights.load_model`).

    Parameters
    ----------
    path : a ``.safetensors`` file with its ``.json`` beside it (``core.weights`` format,
        hash-checked), or a ``.pt`` checkpoint of a full (not LoRA) training run

    Returns
    -------
    state : dict of tensors (``Sam3DMed.state_dict()`` keys)
    config : ``ModelConfig``
    """
    from core.weights import load_model

    model = load_model(path, device=str(map_location or "cpu"))
    return model.state_dict(), model.cfg
