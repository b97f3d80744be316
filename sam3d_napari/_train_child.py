"""The child process of a Fine-tune run (``python -m sam3d_napari._train_child``).

Reads one JSON line (a ``FinetuneJob`` without arrays) from stdin, runs it, and writes
progress, epoch records and the result (or one error line) to stdout as JSON lines that
start with ``@@sam3d``. Any later line on stdin (or stdin closing, when the viewer goes away)
asks the run to stop before its next batch.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import asdict


def _send(**msg) -> None:
    from sam3d_napari._finetune_job import PROTOCOL_PREFIX

    sys.stdout.write(PROTOCOL_PREFIX + json.dumps(msg, default=_plain) + "\n")
    sys.stdout.flush()


def _plain(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def main() -> int:
    from core.errors import InputError
    from sam3d_napari._finetune_job import FinetuneJob, run_finetune

    if hasattr(os, "nice"):
        os.nice(5)  # the viewer's process comes first when cores are short
    stop = threading.Event()
    job = FinetuneJob(**json.loads(sys.stdin.readline()))

    def watch_stdin():
        sys.stdin.readline()  # "stop", or "" when the parent closed the pipe
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        result = run_finetune(
            job,
            progress=lambda d, t, m: _send(progress=[int(d), int(t), str(m)]),
            epoch_done=lambda rec: _send(epoch=rec),
            should_stop=stop.is_set,
        )
    except (InputError, ValueError) as exc:  # bad data or settings: the user's to fix
        _send(error={"message": str(exc), "user": True})
        return 1
    except Exception as exc:  # a bug: keep the traceback in the log (stderr)
        import traceback

        traceback.print_exc()
        _send(error={"message": f"{type(exc).__name__}: {exc}", "user": False})
        return 1
    _send(result=asdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
