"""The web demo's API handler (``gradio_app.api.reconstruct_file``, what ``/reconstruct``
serves): the mask on the input file's own grid, bad requests as one-line errors, names in any
case. Plain function calls, no server."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import save_nifti

pytest.importorskip("gradio")
pytest_plugins = ["gradio_common"]  # the engine and heart_files fixtures

from gradio_common import LV, reconstruct_at  # noqa: E402

from core.errors import InputError  # noqa: E402
from core.io import load_image  # noqa: E402
from core.mesh import load_mesh  # noqa: E402
from gradio_app.api import reconstruct_file  # noqa: E402


def test_reconstruct_file_writes_the_mask_on_the_input_files_own_grid(tmp_path, engine):
    """An LPS file: points are in canonical RAS slices (as sam3d predict), the mask comes back
    on the file's own grid and affine."""
    from core.clicks import Click, PromptSet, first_click
    from core.synthetic import make_heart_phantom

    image, label = make_heart_phantom(11)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine  # same world, flipped i and j
    data = image.data[::-1, ::-1, :]
    path = save_nifti(np.ascontiguousarray(data), lps, tmp_path / "lps.nii.gz")
    canonical = load_image(path)
    np.testing.assert_allclose(canonical.affine, image.affine)
    c = first_click(label.data == LV)
    out = reconstruct_at(engine, path, c, tmp_path / "o")
    mask = nib.load(out["mask"])
    np.testing.assert_allclose(mask.affine, lps)
    assert mask.shape == data.shape
    direct = engine.predict(canonical, PromptSet((Click(2, c.slice_idx, c.row, c.col),)))
    np.testing.assert_array_equal(np.asarray(mask.dataobj).astype(bool), direct.mask[::-1, ::-1, :])
    assert load_mesh(out["mesh"]).n_faces > 0
    info = out["info"]
    assert info["timings_ms"]["total"] > 0 and info["voxels"] == int(direct.mask.sum())
    assert info["shape"] == [64, 64, 64] and info["adapter"] == "base"
    assert info["indices"] == "ras"
    # the same voxel in the file's own indices (rows and columns flipped)
    by_file = reconstruct_file(
        engine,
        path,
        axis=2,
        slice_index=c.slice_idx,
        points=[(63 - c.row, 63 - c.col)],
        indices="file",
        out_dir=tmp_path / "f",
    )
    np.testing.assert_array_equal(nib.load(by_file["mask"]).dataobj, mask.dataobj)
    assert by_file["info"]["indices"] == "file"


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"points": []}, "give at least one positive point"),
        ({"points": [[1, 2, 3]]}, "points must be a list of [row, col] pairs"),
        ({"axis": 5}, "axis must be 0, 1 or 2"),
        ({"slice_index": 64}, "heart.nii.gz: slice 64 is outside axis 2 (0..63)"),
        ({"slice_index": 30.7}, "slice_index must be an integer, got 30.7"),  # not slice 30
        ({"points": [[70, 3]]}, "heart.nii.gz: click (70, 3) on axis 2 slice 30 is outside"),
        ({"weights": "liver"}, "unknown weights 'liver'"),
        ({"modality": "pet"}, "modality must be one of ct, mr, us"),
        ({"indices": "lps"}, "indices must be one of ras, file"),
        ({"indices": "file", "points": [[64, 3]]}, "heart.nii.gz: click (64, 3) on axis 2"),
    ],
)
def test_reconstruct_file_bad_requests(tmp_path, engine, heart_files, kw, message):
    args = {"axis": 2, "slice_index": 30, "points": [[30, 30]], **kw}
    with pytest.raises((InputError, ValueError)) as info:
        reconstruct_file(engine, heart_files[0], out_dir=tmp_path, **args)
    assert message in str(info.value)


def test_reconstruct_file_takes_names_in_any_case(tmp_path, engine, heart_files):
    """The modality "CT", "Ct" or " ct " is the page's "ct" (the API refused all but that), and
    so for the mode, the indices ("RAS") and an axis by name ("Axial")."""
    args = {"slice_index": 30, "points": [[30, 30]]}
    plain = reconstruct_file(engine, heart_files[0], axis=2, out_dir=tmp_path / "ct", **args)
    assert plain["info"]["modality"] == "ct" and plain["info"]["voxels"] > 0
    cases = [("CT", "Volume", "RAS", "Axial"), ("Ct", "VOLUME", "Ras", " axial ")]
    for i, (modality, mode, indices, axis) in enumerate(cases):
        kw = {"modality": modality, "mode": mode, "indices": indices, "axis": axis}
        out = reconstruct_file(engine, heart_files[0], out_dir=tmp_path / str(i), **kw, **args)
        info = out["info"]
        assert (info["modality"], info["mode"], info["indices"]) == ("ct", "volume", "ras")
        assert info["voxels"] == plain["info"]["voxels"]
    # zoom-in applies to volume mode whatever its case
    zoomed = reconstruct_file(
        engine, heart_files[0], axis=2, out_dir=tmp_path / "z", mode="Volume", zoom_in=True, **args
    )
    assert zoomed["info"]["zoom_in"] is True
    with pytest.raises(ValueError) as bad:
        reconstruct_file(engine, heart_files[0], axis=2, out_dir=tmp_path, modality="PET", **args)
    assert str(bad.value) == "modality must be one of ct, mr, us, got 'PET'"
    # and the weights: "Base" and "HEADNECK-CT" are the menu's names
    assert engine.check_weights("Base") == "base"
    names = [c for c in engine.choices if c != "base"]
    assert [engine.check_weights(f" {n.upper()} ") for n in names] == names
    with pytest.raises(InputError, match=r"unknown weights 'liver'; choose one of base"):
        engine.check_weights("liver")
