"""What the web demo's handler tests share: the shipped model behind a SharedEngine, the
sample heart loaded in a session, a spy on the engine's calls and pixels of the slice picture.

Test modules take its fixtures with ``pytest_plugins = ["gradio_common"]``."""

from __future__ import annotations

import pytest

from core.geometry import take_slice
from core.prompts import interior_point
from gradio_app import handlers as H

LV, RV = 2, 4  # the sample heart's left and right ventricles


@pytest.fixture(scope="module")
def engine():
    from core.engine import Reconstructor
    from gradio_app.service import SharedEngine

    return SharedEngine(Reconstructor.from_pretrained())


@pytest.fixture
def sample(tmp_path):
    session, view = H.load_sample(None, root=tmp_path)
    yield session, view
    session.close()


class Spy:
    """A SharedEngine stand-in that records the calls and forwards them."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def check_weights(self, name):
        return self.engine.check_weights(name)

    def predict(self, volume, prompts, **kw):
        self.calls.append((prompts, kw))
        return self.engine.predict(volume, prompts, **kw)


def pixel_of(session, row, col):
    return H.slice_view(session).rc_to_pixel(row, col)


def organ_pixel(session, label: int):
    """``(row, col), (x, y)`` of a pixel deep inside ground-truth class ``label`` on the slice
    on screen."""
    gt = session.gt.data == label
    r, c = interior_point(take_slice(gt, session.axis, session.slice_idx))
    return (r, c), pixel_of(session, r, c)


def lv_pixel(session):
    """A pixel deep inside the LV on the slice on screen."""
    return organ_pixel(session, LV)


def click_lv_twice(session, engine):
    """Two positive clicks on the LV (the second refines the first); the first's result."""
    _, (x, y) = lv_pixel(session)
    H.click(session, engine, x, y)
    first = session.current.result
    H.click(session, engine, x + 8, y + 8)
    return first


@pytest.fixture
def heart_files(tmp_path):
    from core.io import save_image, save_label
    from core.synthetic import make_heart_phantom

    image, label = make_heart_phantom(5)
    return (
        save_image(image, tmp_path / "heart.nii.gz"),
        save_label(label, tmp_path / "heart-label.nii.gz"),
        image,
        label,
    )


def reconstruct_at(engine, path, click, out_dir):
    """The API handler on ``path`` with one positive ``click`` on an axial slice."""
    from gradio_app.api import reconstruct_file

    return reconstruct_file(
        engine,
        path,
        axis=2,
        slice_index=click.slice_idx,
        points=[(click.row, click.col)],
        out_dir=out_dir,
    )
