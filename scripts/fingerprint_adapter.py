"""Record the fingerprints of an adapter's training and validation scans in its metadata.

Adapters trained since fingerprints exist carry them already (``data.train_fingerprints`` and
``data.val_fingerprints`` of ``sam3d_adapter.json``, from the training cache). For an older
adapter this adds them, so that ``sam3d eval`` recognises its training and validation scans
under any name, folder or layout (``core.io.fingerprint``). Each recorded case is looked up by
its training cache's ``source_image`` when that cache is still there, else by case id in
``--data_root``; the weights are not touched.

    python scripts/fingerprint_adapter.py headneck-ct --data_root ../shared/data/openkbp_train
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.adapter_files import ADAPTER_INFO, read_adapter_info  # noqa: E402
from core.atomic import write_json  # noqa: E402
from core.datasets import discover  # noqa: E402
from core.errors import InputError  # noqa: E402
from core.io import fingerprint, load_image  # noqa: E402
from core.weights import resolve_adapter  # noqa: E402


def _source(cache: str | None, cid: str, by_id: dict[str, Path]) -> Path | None:
    try:
        meta = json.loads((Path(str(cache)) / "cases" / cid / "meta.json").read_text())
        return Path(meta["source_image"])
    except (OSError, ValueError, KeyError, TypeError):
        return by_id.get(cid)


def main(argv=None) -> int:
    try:
        return _main(argv)
    except InputError as exc:
        print(f"fingerprint_adapter: error: {exc}", file=sys.stderr)
        return 1


def _main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("adapter", help="an adapter folder or a shipped adapter's name")
    ap.add_argument("--data_root", help="the dataset it was trained on (any layout)")
    args = ap.parse_args(argv)
    folder = resolve_adapter(args.adapter)
    info = read_adapter_info(folder)
    data = info.get("data")
    if not isinstance(data, dict) or not data.get("train_cases"):
        print(f"{folder / ADAPTER_INFO}: records no training cases", file=sys.stderr)
        return 1
    by_id = (
        {c.case_id: Path(c.image) for c in discover(args.data_root).cases} if args.data_root else {}
    )
    missing = []
    for role in ("train", "val"):
        recorded = data.get(f"{role}_fingerprints")
        prints = dict(recorded) if isinstance(recorded, dict) else {}  # kept: not recomputed
        for cid in data.get(f"{role}_cases") or ():
            if isinstance(prints.get(cid), str):
                continue
            src = _source(data.get(f"{role}_cache"), cid, by_id)
            if src is None or not src.is_file():
                missing.append(cid)
                continue
            prints[cid] = fingerprint(load_image(src))
        data[f"{role}_fingerprints"] = prints
    write_json(folder / ADAPTER_INFO, info)
    n = sum(len(data[f"{r}_fingerprints"]) for r in ("train", "val"))
    print(f"{folder / ADAPTER_INFO}: {n} fingerprints recorded")
    if missing:
        print(f"not found, not recorded ({len(missing)}): {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
