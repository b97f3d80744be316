"""Sample data: the synthetic cardiac CT and its labels (``core.synthetic``).

It is the demo's heart (``core.predict.DEMO_SEED``, 64^3 at 3 mm): a case the shipped model
never saw in training.
"""

from __future__ import annotations

from sam3d_napari._reader import label_layer_data, volume_layer_data

__all__ = ["make_heart_sample", "SAMPLE_SEED"]

SAMPLE_SEED = 424242  # core.predict.DEMO_SEED, repeated to keep this import light


def make_heart_sample(seed: int = SAMPLE_SEED) -> list[tuple]:
    """Image (HU) and ground-truth labels (1 LA, 2 LV, 3 RA, 4 RV, 5 myocardium)."""
    from core.synthetic import HEART_LABELS, make_heart_phantom

    image, label = make_heart_phantom(seed)
    names = {int(k): v for k, v in HEART_LABELS.items()}
    return [
        volume_layer_data(
            image,
            name="heart CT (synthetic)",
            contrast_limits=[-200.0, 600.0],
            metadata={"modality": "ct", "sample_seed": seed},
        ),
        label_layer_data(
            label,
            name="heart labels (ground truth)",
            opacity=0.5,
            metadata={"label_names": names, "sample_seed": seed},
        ),
    ]
