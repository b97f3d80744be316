"""What the training tests share: a tiny model, a few fast steps, and a config from them."""

from __future__ import annotations

import json

from core.config import TrainConfig, load_config

TINY = [
    "model.cube_size=16",
    "model.view_size=16",
    "model.patch=8",
    "model.dim=32",
    "model.depth=1",
    "model.heads=2",
    "model.enc_channels=[24,24,32]",
    "model.dec_channels=[24,24,0]",
]
# core.cubes' simulated previous prediction needs cubes larger than 16^3 (see the report):
# refinement is off at this scale.
FAST = [
    "training.epochs=2",
    "training.steps_per_epoch=2",
    "training.batch_size=2",
    "training.warmup_steps=1",
    "training.val_items=2",
    "training.checkpoint_every=1",
    "training.init_checkpoint=random",
    "training.learning_rate=1e-3",
    "sampling.p_refine=0.0",
]


def make_cfg(data, out, *extra) -> TrainConfig:
    paths = [
        f"data.train_data={json.dumps(str(data))}",
        f"training.output_dir={json.dumps(str(out))}",
    ]
    return load_config(None, [*TINY, *FAST, *paths, *extra])
