"""One :class:`core.engine.Reconstructor` shared by every session of the web demo.

The model is loaded once, at launch. Requests from different sessions (and API clients) run in
gradio's worker threads, so the weights in use and the prediction must change together:
:meth:`SharedEngine.predict` holds a lock across ``set_adapter`` and ``predict``. A
reconstruction is CPU-bound and already uses every core through torch, so serialising the model
costs no throughput; reading files, drawing pictures and writing outputs still overlap.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from core.errors import InputError

if TYPE_CHECKING:
    from core.clicks import PromptSet
    from core.engine import Reconstructor, Result
    from core.io import Volume

__all__ = ["BASE", "SharedEngine"]

#: The name of the bare base weights in menus and in the API.
BASE = "base"


class SharedEngine:
    """Thread-safe front of a Reconstructor with its shipped adapters.

    Parameters
    ----------
    reconstructor : the loaded engine (its current adapter is the default choice)
    adapters : adapter names offered besides the base; default: the shipped ones
    """

    def __init__(self, reconstructor: Reconstructor, adapters=None):
        from core.weights import list_shipped_adapters

        self.reconstructor = reconstructor
        names = list(list_shipped_adapters()) if adapters is None else list(adapters)
        self.choices: tuple[str, ...] = (BASE, *[n for n in names if n != BASE])
        current = getattr(reconstructor, "name", BASE)
        self.default = current if current in self.choices else BASE
        self._lock = threading.Lock()
        self.calls = 0  # reconstructions served, for the page's footer and tests

    def check_weights(self, name: str | None) -> str:
        """The weights' menu name, whatever its case ("Base", "HeadNeck-CT"), or InputError
        listing the choices."""
        key = "" if name is None else str(name).strip().lower()
        by_key = {c.lower(): c for c in self.choices}
        if key in ("", "none"):
            return BASE
        if key not in by_key:
            raise InputError(
                None, f"unknown weights {name!r}; choose one of {', '.join(self.choices)}"
            )
        return by_key[key]

    def preload(self) -> None:
        """Load every offered adapter now, so that the first switch is instant, and warm the
        model up (``Reconstructor.warm_up``), so that the first visitor's click runs at full
        speed."""
        with self._lock:
            for name in self.choices[1:]:
                self.reconstructor.set_adapter(name)
            self._use(self.default)
            self.reconstructor.warm_up()

    def _use(self, name: str) -> None:
        if getattr(self.reconstructor, "name", BASE) != name:
            self.reconstructor.set_adapter(None if name == BASE else name)

    def predict(
        self,
        volume: Volume,
        prompts: PromptSet,
        *,
        weights: str = BASE,
        mode: str = "volume",
        modality: str = "ct",
        previous: Result | None = None,
        zoom_in: bool = False,
    ) -> Result:
        """:meth:`core.engine.Reconstructor.predict` with the named weights and the engine's
        default cube policy (with its optional zoom-in if ``zoom_in``), atomically."""
        from core.engine import CubePolicy

        name = self.check_weights(weights)
        with self._lock:
            self._use(name)
            result = self.reconstructor.predict(
                volume,
                prompts,
                mode=mode,
                modality=modality,
                previous=previous,
                policy=CubePolicy(zoom_in=bool(zoom_in)),
            )
            self.calls += 1
        return result
