"""Write a training checkpoint's weights as a base: ``<dst>.safetensors`` + ``<dst>.json``.

    python scripts/export_base.py runs/base_synthetic_stage4/last.pt core/assets/base.safetensors \
        --recipe "..." [--trained_on "..."]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.checkpoint import load_weights  # noqa: E402
from core.model import Sam3DMed  # noqa: E402
from core.weights import save_weights  # noqa: E402

# What scripts/pretrain_data.sh writes: the data every base stage trains on.
PRETRAIN_DATA = (
    "synthetic only: 240 cardiac CT phantoms + 300 organ-shape volumes (core.synthetic, seed 0)"
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="a .pt checkpoint or .safetensors weights")
    ap.add_argument("dst", help="<name>, <name>.safetensors or <name>.json")
    ap.add_argument("--trained_on", default=PRETRAIN_DATA, help="default: the synthetic mix")
    ap.add_argument("--recipe", required=True)
    args = ap.parse_args(argv)
    state, cfg = load_weights(args.src)
    model = Sam3DMed(cfg)
    model.load_state_dict(state)
    path = save_weights(
        model, args.dst, metadata={"trained_on": args.trained_on, "recipe": args.recipe}
    )
    print("base weights written to", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
