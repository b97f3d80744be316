"""An adapter folder's files, read without torch (:mod:`core.lora` trains and loads them).

A front end checks a folder the user picked on its GUI thread; importing torch there would
freeze the window for seconds on a first use, so this module needs only the standard library.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from core.errors import InputError

__all__ = [
    "ADAPTER_WEIGHTS",
    "ADAPTER_CONFIG",
    "ADAPTER_INFO",
    "ADAPTER_FORMAT_VERSION",
    "read_adapter_info",
    "trained_modality",
    "trained_ct_window",
]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_INFO = "sam3d_adapter.json"
ADAPTER_FORMAT_VERSION = 1


def read_adapter_info(adapter_dir: str | os.PathLike) -> dict:
    """Check an adapter folder's files and return its ``sam3d_adapter.json``.

    Raises
    ------
    InputError
        A missing folder or file, unreadable JSON, or not our format; names the file.
    """
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise InputError(folder, "adapter folder not found")
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG, ADAPTER_INFO):
        if not (folder / name).is_file():
            raise InputError(
                folder / name,
                f"missing from the adapter folder (an adapter is {ADAPTER_WEIGHTS}, "
                f"{ADAPTER_CONFIG} and {ADAPTER_INFO})",
            )
    parsed = {}
    for name in (ADAPTER_CONFIG, ADAPTER_INFO):
        try:
            parsed[name] = json.loads((folder / name).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(folder / name, f"not readable JSON ({exc})") from exc
    info = parsed[ADAPTER_INFO]
    if not isinstance(info, dict) or not isinstance(info.get("base_hash"), str):
        raise InputError(folder / ADAPTER_INFO, "not a sam3d adapter: no 'base_hash'")
    if not isinstance(info.get("model"), dict):
        raise InputError(folder / ADAPTER_INFO, "not a sam3d adapter: no 'model' config")
    version = info.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= ADAPTER_FORMAT_VERSION:
        raise InputError(
            folder / ADAPTER_INFO,
            f"format_version {version!r} is not one this sam3d-napari reads "
            f"(1..{ADAPTER_FORMAT_VERSION})",
        )
    return info


def trained_modality(info: dict) -> str | None:
    """The modality an adapter's training data was normalised as (``"ct"``, ``"mr"``, ``"us"``;
    its training config's ``data.modality``), or None when its ``sam3d_adapter.json`` does not
    say."""
    training = info.get("training")
    data = training.get("data") if isinstance(training, dict) else None
    modality = data.get("modality") if isinstance(data, dict) else None
    return modality if isinstance(modality, str) else None


def trained_ct_window(info: dict) -> tuple[float, float] | None:
    """The HU window a CT adapter's training cache was normalised with (``sam3d preprocess
    --ct_window``; its data summary's ``ct_window``), or None when it does not say (adapters
    before it was recorded, and MR or US adapters)."""
    data = info.get("data")
    window = data.get("ct_window") if isinstance(data, dict) else None
    if (
        isinstance(window, (list, tuple))
        and len(window) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)
        and window[1] > window[0]
    ):
        return float(window[0]), float(window[1])
    return None
