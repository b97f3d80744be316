"""Run a benchmark's measurement in a fresh Python process and read back its JSON result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_json_child(code: str, args: dict, *, cwd: Path, env: dict | None = None, what: str) -> dict:
    """``python -c code '<args as JSON>'`` in ``cwd``; the JSON object on the last line of its
    output. A failing child stops the benchmark with the tail of its stderr, naming ``what``."""
    res = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise SystemExit(f"{what} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])
