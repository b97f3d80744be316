"""The README's mesh coordinates, end to end through `sam3d predict` with the shipped weights:
mesh.ply and mesh.glb hold one closed, outward surface in the input NIfTI's world mm (RAS+),
on the boundary of mask.nii.gz's voxels, however the file stores the volume."""

import math

import nibabel as nib
import numpy as np
import pytest
import trimesh
from nibabel.orientations import axcodes2ornt
from scipy.spatial import cKDTree

from core.cli import main
from core.clicks import first_click
from core.mesh import mask_to_mesh
from core.predict import DEMO_SEED
from core.synthetic import make_heart_phantom


def rotation(axis, angle):
    return trimesh.transformations.rotation_matrix(angle, axis)[:3, :3]


def test_predict_meshes_lie_on_the_mask_in_world_mm_for_any_affine(tmp_path):
    image, label = make_heart_phantom(DEMO_SEED)  # RAS+, 3 mm voxels
    ras = nib.Nifti1Image(image.data, image.affine)
    turn, shift = rotation((1, 2, 3), math.radians(20)), np.array([12.5, -40.0, 300.0])
    oblique = image.affine.copy()
    oblique[:3] = turn @ oblique[:3]
    oblique[:3, 3] += shift
    files = {  # the same heart: stored three other ways, then turned and moved in the world
        "ras": ras,
        "lps": ras.as_reoriented(axcodes2ornt("LPS")),
        "las": ras.as_reoriented(axcodes2ornt("LAS")),  # one flipped axis: det < 0
        "pir": ras.as_reoriented(axcodes2ornt("PIR")),
        "oblique": nib.Nifti1Image(image.data, oblique),
    }
    c = first_click(label.data == 2)  # the left ventricle; RAS indices, as --indices ras
    surfaces = {}
    for name, img in files.items():
        nib.save(img, tmp_path / f"{name}.nii.gz")
        args = ["predict", "--volume", str(tmp_path / f"{name}.nii.gz"), "--axis", str(c.axis),
                "--slice", str(c.slice_idx), "--point", f"{c.row:g},{c.col:g}"]  # fmt: skip
        assert main([*args, "--out", str(tmp_path / name)]) == 0
        written = nib.load(tmp_path / name / "mask.nii.gz")
        np.testing.assert_allclose(written.affine, img.affine, atol=1e-5)
        mask = np.asarray(written.dataobj) > 0
        ply = trimesh.load(tmp_path / name / "mesh.ply", process=False)
        glb = trimesh.load(tmp_path / name / "mesh.glb", force="mesh", process=False)
        np.testing.assert_array_equal(glb.vertices, ply.vertices)  # no axis swap, no metres
        np.testing.assert_array_equal(glb.faces, ply.faces)
        welded = trimesh.load(tmp_path / name / "mesh.ply")  # as a user loads it
        assert welded.is_watertight and welded.is_winding_consistent, name
        mask_mm3 = mask.sum() * abs(np.linalg.det(written.affine[:3, :3]))
        assert ply.volume == pytest.approx(mask_mm3, rel=0.03), name  # > 0: normals point out
        # The mask's own surface, from nibabel's voxel -> world map, within half a voxel.
        boundary = mask_to_mesh(mask, written.affine).vertices
        assert cKDTree(boundary).query(ply.vertices)[0].max() < 1.5 + 0.05, name
        assert cKDTree(ply.vertices).query(boundary)[0].max() < 1.5 + 0.05, name
        surfaces[name] = np.asarray(ply.vertices)
    for name in ("lps", "las", "pir"):  # the same anatomy stored another way: the same mesh
        assert cKDTree(surfaces["ras"]).query(surfaces[name])[0].max() < 1e-3, name
    moved = surfaces["ras"] @ turn.T + shift  # the turned volume: the mesh turned with it
    dist = cKDTree(moved).query(surfaces["oblique"])[0]
    # The model sees the turned volume resampled: a few voxels differ (0.11 mm on average, 1.6
    # at most); a wrong frame would put the mesh tens of mm away.
    assert dist.mean() < 0.3 and dist.max() < 3.0


def test_a_result_without_a_surface_leaves_no_earlier_mesh_behind(tmp_path):
    """`sam3d predict --out DIR` again, and this time nothing to mesh (an empty mask): the
    first run's mesh.glb / mesh.ply stayed beside the new mask.nii.gz, contradicting it."""
    from core.clicks import PromptSet
    from core.engine import Reconstructor
    from core.predict import write_outputs

    image, label = make_heart_phantom(DEMO_SEED)
    rec = Reconstructor.from_pretrained()
    prompts = PromptSet((first_click(label.data == 2),))
    paths = write_outputs(rec.predict(image, prompts), image, tmp_path)
    assert {"mesh_glb", "mesh_ply"} <= set(paths) and (tmp_path / "mesh.ply").is_file()
    no_surface = rec.predict(image, prompts, mesh=False)  # mesh None, as for an empty mask
    assert no_surface.mesh is None
    paths = write_outputs(no_surface, image, tmp_path)
    assert "mesh_glb" not in paths and "mesh_ply" not in paths
    assert not (tmp_path / "mesh.glb").exists() and not (tmp_path / "mesh.ply").exists()
    assert (tmp_path / "mask.nii.gz").is_file()
