"""The engine's adapter manager: one base model in memory, adapters switched on it.

Split from :mod:`core.lora` (which owns applying, saving and loading single adapters).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from core.lora import (
    _check_compatible,
    _is_peft_model,
    _load_checked,
    base_hash,
    read_adapter_info,
    unload_lora,
)
from core.weights import load_model

if TYPE_CHECKING:
    from peft import PeftModel

__all__ = ["AdapterManager"]


class AdapterManager:
    """One base model in memory and any number of adapters on it, switched without ever
    reloading the base.

    Call :attr:`model` (or the manager itself): it runs the base with the active adapter,
    or the bare base after :meth:`deactivate`. Adapters are frozen (inference only). Not
    thread-safe: switch between forward passes, not during one.

    Parameters
    ----------
    base : a plain Sam3DMed; it is wrapped in place when the first adapter loads, and
        handed back clean by :meth:`unload`
    """

    def __init__(self, base: nn.Module):
        if _is_peft_model(base):
            raise TypeError("AdapterManager takes the plain base model, not a peft model")
        self._base = base
        self._base_hash = base_hash(base)
        self._requires_grad = {n: p.requires_grad for n, p in base.named_parameters()}
        self._peft: PeftModel | None = None
        self._paths: dict[str, Path] = {}
        self._active: str | None = None

    @classmethod
    def from_weights(cls, path=None, *, device: str = "cpu") -> AdapterManager:
        """Load base weights once (None: the shipped base) and manage adapters on them."""
        return cls(load_model(path, device=device))

    @property
    def names(self) -> tuple[str, ...]:
        """Loaded adapters, in load order."""
        return tuple(self._paths)

    @property
    def active(self) -> str | None:
        """The active adapter's name; None when the bare base runs."""
        return self._active

    @property
    def base_hash(self) -> str:
        return self._base_hash

    @property
    def model(self) -> nn.Module:
        """The module to call: the peft model once an adapter is loaded, else the base."""
        return self._base if self._peft is None else self._peft

    def __call__(self, batch: dict) -> dict:
        return self.model(batch)

    def path(self, name: str) -> Path:
        self._require(name)
        return self._paths[name]

    def _require(self, name: str) -> None:
        if name not in self._paths:
            loaded = ", ".join(self._paths) or "none"
            raise KeyError(f"adapter {name!r} is not loaded (loaded: {loaded})")

    def load(
        self, adapter_dir: str | os.PathLike, *, name: str | None = None, check_base: bool = True
    ) -> str:
        """Load an adapter (without activating it); returns its name (default: the folder's
        name). The base is not reloaded: the adapter joins the model in memory."""
        folder = Path(adapter_dir)
        name = name or folder.name
        if name in self._paths:
            raise ValueError(f"adapter {name!r} is already loaded (from {self._paths[name]})")
        info = read_adapter_info(folder)
        _check_compatible(folder, info, self._base.cfg, self._base_hash if check_base else None)
        self._peft = _load_checked(self.model, folder, name, trainable=False)
        self._paths[name] = folder
        self._apply_state()
        return name

    def activate(self, name: str) -> None:
        """Run ``name`` from now on."""
        self._require(name)
        self._active = name
        self._apply_state()

    def deactivate(self) -> None:
        """Run the bare base from now on; adapters stay loaded."""
        self._active = None
        self._apply_state()

    def _apply_state(self) -> None:
        if self._peft is None:
            return
        if self._active is None:
            # disables the LoRA layers and the head copies alike: the outputs are the base's
            self._peft.base_model.disable_adapter_layers()
        else:
            self._peft.base_model.enable_adapter_layers()
            self._peft.set_adapter(self._active)
        # set_adapter makes the active adapter trainable; the engine only runs inference
        for p in self._peft.parameters():
            p.requires_grad_(False)

    def remove(self, name: str) -> None:
        """Drop one adapter from memory."""
        self._require(name)
        if len(self._paths) == 1:
            self.unload()
            return
        if self._active == name:
            self._active = None
        # peft refuses to delete the active adapter: point it at another one first
        other = next(n for n in self._paths if n != name)
        self._peft.base_model.enable_adapter_layers()
        self._peft.set_adapter(other)
        self._peft.delete_adapter(name)
        del self._paths[name]
        self._apply_state()

    def unload(self) -> nn.Module:
        """Remove every adapter and return the clean base (the object given at init, with
        its original weights and ``requires_grad`` flags)."""
        if self._peft is not None:
            base = unload_lora(self._peft)
            if base is not self._base or base_hash(base) != self._base_hash:
                raise RuntimeError("unloading the adapters did not restore the base weights")
            for n, p in base.named_parameters():
                p.requires_grad_(self._requires_grad.get(n, True))
        self._peft, self._active = None, None
        self._paths.clear()
        return self._base

    def merge(self, name: str | None = None) -> nn.Module:
        """A merged copy of the base with adapter ``name`` (default: the active one) folded
        into its weights: a plain Sam3DMed for fast inference. The manager is unchanged."""
        name = name or self._active
        if name is None:
            raise ValueError("no adapter to merge: name one or activate one first")
        self._require(name)
        dup = copy.deepcopy(self._peft)
        dup.base_model.enable_adapter_layers()
        dup.set_adapter(name)
        merged = dup.merge_and_unload(adapter_names=[name])
        for p in merged.parameters():
            p.requires_grad_(False)
        return merged.eval()
