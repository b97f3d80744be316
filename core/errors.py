"""Errors raised by the engine for bad input.

Every error about a file names the file and the problem in one line, so that a CLI, a napari
notification or a ``gr.Error`` can show it as is.
"""

from __future__ import annotations

import os

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input data: a file that cannot be used, with the reason.

    Parameters
    ----------
    path : str or os.PathLike or None
        The offending file or folder (``None`` when the problem is not tied to a file).
    problem : str
        What is wrong, in a short phrase (no trailing period needed).
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem.strip().rstrip(".")
        msg = self.problem if self.path is None else f"{self.path}: {self.problem}"
        super().__init__(msg.replace("\n", " "))
