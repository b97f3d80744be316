"""Picture: mean Dice after each click from ``sam3d eval`` metrics.json files, side by side.

    .venv/bin/python bench/click_curves.py --out docs/images/click_curves.png \\
        --panel "hearts, volume" "stage 9=runs/eval_v8/heart_volume/metrics.json" \\
                                 "stage 10=runs/eval_v9/heart_volume/metrics.json" \\
        --panel "openkbp_val, volume" "..."

Each ``--panel`` is a title followed by ``LABEL=METRICS_JSON`` lines (the ``aggregate.overall``
Dice per click; ``--metric`` picks another of its per-click metrics).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def per_click(metrics: dict, metric: str = "dice") -> list[float]:
    """``aggregate.overall[metric@k]`` for k = 1, 2, ... as long as the file has them."""
    overall = metrics["aggregate"]["overall"]
    values, k = [], 1
    while f"{metric}@{k}" in overall:
        values.append(float(overall[f"{metric}@{k}"]))
        k += 1
    if not values:
        raise ValueError(f"no '{metric}@1' in aggregate.overall")
    return values


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--panel", nargs="+", action="append", required=True, metavar="TITLE LABEL=METRICS_JSON"
    )
    ap.add_argument("--metric", default="dice")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    from core.viz import click_curves

    panels = {}
    for title, *lines in a.panel:
        if not lines:
            ap.error(f"panel {title!r} has no LABEL=METRICS_JSON")
        panels[title] = {}
        for line in lines:
            label, sep, path = line.partition("=")
            if not sep:
                ap.error(f"{line!r}: expected LABEL=METRICS_JSON")
            try:
                values = per_click(json.loads(Path(path).read_text()), a.metric)
            except (OSError, ValueError, KeyError) as e:
                ap.error(f"{path}: {e}")
            panels[title][label] = values
            print(f"{title} | {label}: " + ", ".join(f"{v:.3f}" for v in values))
    ylabel = "mean Dice" if a.metric == "dice" else f"mean {a.metric}"
    print(f"written: {click_curves(panels, a.out, ylabel=ylabel)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
