"""core.atomic: what its writers put on disk."""

import json
import math
import re

import numpy as np
import pytest

from core.atomic import json_text, make_output_dir, safe_name, write_json
from core.errors import InputError


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


def test_make_output_dir_creates_folders_and_names_a_file_in_the_way(tmp_path):
    assert make_output_dir(tmp_path / "a" / "b").is_dir()
    assert make_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"  # exists: fine
    taken = tmp_path / "taken.txt"
    taken.write_text("x")
    with pytest.raises(InputError, match=f"^{re.escape(str(taken))}: exists and is not a folder$"):
        make_output_dir(taken)
    blocked = f"{taken / 'sub'}: cannot create the folder: {taken} is not a folder"
    with pytest.raises(InputError, match=f"^{re.escape(blocked)}$"):
        make_output_dir(taken / "sub")
    assert taken.read_text() == "x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("left kidney (2)", "left_kidney_2"),
        ("spleen ", "spleen"),
        ("a__b", "a_b"),
        ("../etc/passwd", "etc_passwd"),
        ("Parotid_L", "Parotid_L"),
        ("C-spine", "C-spine"),
        ("  ", ""),
    ],
)
def test_safe_name_gives_clean_file_name_parts(text, expected):
    """Organ and case names become file name parts without separators, spaces, doubled or
    edge underscores (napari's mesh files were 'organs_2_spleen_.ply' for 'spleen ')."""
    assert safe_name(text) == expected
