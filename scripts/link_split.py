"""Link one part of a training run's case split into a dataset folder (links, never copies).

    .venv/bin/python scripts/link_split.py --summary runs/<run>/data_summary.json --part val \
        --out runs/data/<name>/val --sources runs/data/heart_train [--only-prefix heart_] \
        [--add-all-from runs/data/tubes_train]

The case ids are the run's ``<part>_cases``; each is found in one of ``--sources`` and linked
by a relative path. ``--add-all-from`` also links every case folder of that folder (new cases
that a later stage adds to the run's training cases). Used by the experiments' data scripts
(``scripts/stage6_data.sh``, ``scripts/heart_adapter_data.sh``), which keep the run's split so
that no validation case of the run is trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def link_split(summary, part, out, sources, only_prefix="", add_all_from=None) -> list[str]:
    """Link the cases and return their ids, in order."""
    ids = json.loads(Path(summary).read_text())[f"{part}_cases"]
    ids = [c for c in ids if c.startswith(only_prefix)]
    where = {c.name: c for d in sources for c in Path(d).iterdir() if c.is_dir()}
    if add_all_from:
        extra = sorted(c for c in Path(add_all_from).iterdir() if c.is_dir())
        where.update({c.name: c for c in extra})
        ids = ids + [c.name for c in extra]
    missing = [c for c in ids if c not in where]
    if missing:
        raise SystemExit(
            f"{summary}: {len(missing)} case(s) not found in the sources, e.g. {missing[0]}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for case in ids:
        link = out / case
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(where[case], out))
    return ids


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summary", required=True, help="the run's data_summary.json")
    ap.add_argument("--part", required=True, choices=("train", "val"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--sources", nargs="+", required=True, help="folders holding the cases")
    ap.add_argument("--only-prefix", default="", help="keep only case ids with this prefix")
    ap.add_argument("--add-all-from", default=None, help="also link every case of this folder")
    a = ap.parse_args(argv)
    ids = link_split(a.summary, a.part, a.out, a.sources, a.only_prefix, a.add_all_from)
    print(f"{a.out}: {len(ids)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
