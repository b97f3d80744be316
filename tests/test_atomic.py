"""core.atomic: what its writers put on disk."""

import json
import math

import numpy as np

from core.atomic import json_text, write_json


def _strict_loads(text: str):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_is_strict_nan_and_infinities_become_null(tmp_path):
    obj = {
        "dice": float("nan"),
        "hd95": np.float32("inf"),
        "curve": [1.0, -math.inf, np.float64(0.5)],
        "pair": (np.nan, 2),
        "array": np.array([0.25, np.nan]),
        "n": np.int64(3),
    }
    path = write_json(tmp_path / "m.json", obj)
    expected = {
        "dice": None,
        "hd95": None,
        "curve": [1.0, None, 0.5],
        "pair": [None, 2],
        "array": [0.25, None],
        "n": 3,
    }
    assert _strict_loads(path.read_text()) == expected
    assert _strict_loads(json_text(obj)) == expected
    assert "\n" not in json_text(obj)  # one line, as metrics.jsonl needs
