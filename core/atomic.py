"""Atomic file writes: write to a temporary file in the target folder, then rename.

A process killed mid-write leaves at worst a ``.tmp-*`` file, never a truncated target.
JSON is written strict (``json_text``): NaN and infinities become ``null``.
``make_output_dir`` creates a command's output folder or fails with one line naming it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from core.errors import InputError

__all__ = [
    "safe_name",
    "atomic_path",
    "json_text",
    "make_output_dir",
    "write_json",
    "write_text",
    "save_npy",
    "save_npz",
]


def safe_name(text: str) -> str:
    """``text`` as a file name part: its letters, digits and ``-``, every other run of
    characters as one ``_`` and none at either end (no path separators, no spaces):
    "left kidney (2)" gives "left_kidney_2", "a__b" "a_b", "  " "" (callers fall back)."""
    kept = "".join(ch if ch.isalnum() or ch == "-" else "_" for ch in str(text))
    return re.sub("_+", "_", kept).strip("_")


def make_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder ``path`` (and its parents) unless it exists.

    Raises
    ------
    InputError
        ``path``, or a folder above it, exists and is not a folder; or the folder cannot be
        created (permissions, read-only file system). One line naming the path.
    """
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
        if blocker == out:
            raise InputError(out, "exists and is not a folder") from exc
        if blocker is not None:
            raise InputError(out, f"cannot create the folder: {blocker} is not a folder") from exc
        raise InputError(out, f"cannot create the folder ({exc.strerror or exc})") from exc
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    ``suffix`` is kept on the temporary name for writers that infer the format from it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the usual permissions of a new file.
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj, *, indent: int = 2) -> Path:
    return write_text(path, json_text(obj, indent=indent) + "\n")


def json_text(obj, *, indent: int | None = None) -> str:
    """``obj`` as strict JSON: NumPy values and paths converted, NaN and infinities written as
    ``null`` (``json.dumps`` would write ``NaN``, which strict JSON readers reject)."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False, default=_jsonable)


def _finite(o):
    """``o`` with every non-finite float (in dicts, lists, tuples, arrays) replaced by None."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    return o


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as f:
        np.save(f, array)
    return Path(path)


def save_npz(path: str | os.PathLike, *, compressed: bool = False, **arrays) -> Path:
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)
    return Path(path)
