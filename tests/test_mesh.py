"""Meshes of masks in world mm: geometry against analytic values, orientation, file round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree
from skimage.draw import ellipsoid, ellipsoid_stats
from skimage.measure import marching_cubes

from core.errors import InputError
from core.io import voxel_to_world
from core.mesh import MESH_FORMATS, Mesh, load_mesh, mask_to_mesh, save_mesh, save_scene

SEMI_AXES = (10.0, 14.0, 20.0)  # mm
SPACING = (1.0, 0.8, 1.25)  # mm


def rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def affine_from(linear, translation):
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = translation
    return a


@pytest.fixture(scope="module")
def ell():
    """An ellipsoid mask on an anisotropic grid, its affine, and the analytic volume and area."""
    mask = ellipsoid(*SEMI_AXES, spacing=SPACING)
    affine = affine_from(np.diag(SPACING), (-120.0, 35.0, 410.0))
    vol, area = ellipsoid_stats(*SEMI_AXES)
    return mask, affine, vol, float(area)


def outward_fraction(mesh, center):
    t = mesh.vertices.astype(float)[mesh.faces]
    normals = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    return np.mean(np.einsum("ij,ij->i", normals, t.mean(axis=1) - center) > 0)


def test_ellipsoid_volume_area_and_position_in_world_mm(ell):
    mask, affine, vol, area = ell
    mesh = mask_to_mesh(mask, affine)
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32
    assert mesh.volume() == pytest.approx(vol, rel=0.02)
    center = voxel_to_world(affine, (np.asarray(mask.shape) - 1) / 2)
    expected = np.stack([center - SEMI_AXES, center + SEMI_AXES])
    assert np.allclose(mesh.bounds(), expected, atol=max(SPACING))
    # Binary marching cubes is a staircase: its area is several % too large until smoothed.
    assert mesh.area() > 1.05 * area
    smooth = mask_to_mesh(mask, affine, smooth_iterations=10)
    assert smooth.area() == pytest.approx(area, rel=0.03)
    assert smooth.volume() == pytest.approx(vol, rel=0.02)  # Taubin does not shrink
    assert smooth.n_vertices == mesh.n_vertices and np.array_equal(smooth.faces, mesh.faces)


def test_oblique_affine_maps_marching_cubes_vertices_exactly():
    mask = ellipsoid(6, 8, 5).astype(np.uint8)
    mask[0:3, 2:6, 3:7] = 1  # touches the array border: must still be closed
    linear = rotation((1, 2, 3), 0.7) @ np.diag((0.7, 1.3, 2.1))
    affine = affine_from(linear, (12.5, -40.0, 7.0))
    mesh = mask_to_mesh(mask, affine)
    verts, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5)
    expected = voxel_to_world(affine, verts - 1.0)
    assert mesh.n_vertices == len(expected)
    assert np.allclose(mesh.vertices, expected, atol=1e-4)
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tm.is_watertight and tm.is_winding_consistent


@pytest.mark.parametrize("flip_axis", [None, 0, 2])
def test_normals_point_outward_for_any_handedness(flip_axis):
    mask = ellipsoid(8, 6, 10, spacing=(1.0, 1.0, 1.0))
    linear = rotation((0, 1, 1), 0.4) @ np.diag((1.0, 1.5, 0.6))
    if flip_axis is not None:  # mirror one voxel axis: negative determinant
        linear = linear @ np.diag([-1.0 if i == flip_axis else 1.0 for i in range(3)])
    affine = affine_from(linear, (5.0, 6.0, 7.0))
    assert (np.linalg.det(linear) < 0) == (flip_axis is not None)
    mesh = mask_to_mesh(mask, affine)
    voxel_volume = mask.sum() * abs(np.linalg.det(linear))
    assert mesh.volume() == pytest.approx(voxel_volume, rel=0.02)
    center = voxel_to_world(affine, (np.asarray(mask.shape) - 1) / 2)
    assert outward_fraction(mesh, center) > 0.99


def border_box():
    mask = np.zeros((20, 21, 22), bool)
    mask[:, 4:15, 3:] = True  # touches both ends of axis 0 and the far end of axis 2
    return mask


@pytest.mark.parametrize("step", [2, 3])
@pytest.mark.parametrize("make", [border_box, lambda: np.pad(ellipsoid(6, 7, 8), 3)])
def test_coarse_step_still_gives_a_closed_surface(step, make):
    """Marching cubes samples every step-th voxel from index 0: the background margin at the
    end of an axis was skipped, and the surface came out open on that side (an object cut by
    the array border, and at step 3 an ellipsoid well inside)."""
    mask = make()
    affine = affine_from(np.diag((1.2, 0.8, 2.0)), (10.0, 20.0, 30.0))
    fine = mask_to_mesh(mask, affine)
    coarse = mask_to_mesh(mask, affine, step_size=step)
    tm = trimesh.Trimesh(coarse.vertices, coarse.faces)
    assert tm.is_watertight and tm.is_winding_consistent
    assert 0.6 * fine.volume() < coarse.volume() < fine.volume()  # 0.84 / 0.65: coarser
    # in place: within half a step (of the coarsest axis, 2 mm) of the fine surface's box
    lo, hi = fine.bounds()
    assert np.all(coarse.bounds() >= lo - step) and np.all(coarse.bounds() <= hi + step)


def test_crop_keeps_vertices_of_a_small_object_in_a_large_volume():
    big = np.zeros((90, 80, 70), dtype=np.float32)
    big[30:45, 20:31, 40:52] = ellipsoid(7, 5, 5.5)[1:16, 1:12, 1:13]
    # Probability-like values: one inside, one below the level just outside the object's box,
    # which a crop padded with zeros instead of the real neighbours would get wrong.
    big[36, 25, 45], big[29, 25, 45] = 0.8, 0.3
    assert big[30, 25, 45] == 1
    mesh = mask_to_mesh(big, np.eye(4))
    verts, _, _, _ = marching_cubes(np.pad(big, 1), 0.5)
    assert np.allclose(np.sort(mesh.vertices, axis=0), np.sort(verts - 1, axis=0), atol=1e-5)


@pytest.mark.parametrize("where", ["inside", "at-the-border"])
def test_a_block_with_its_origin_gives_the_whole_masks_mesh_exactly(where):
    """An organ's box cut out of a CT-sized map (the web page's ground-truth surfaces) with
    ``origin=`` gives the very vertices and faces of the whole map's mesh, smoothed too,
    for an oblique affine and an organ touching the volume's border."""
    lab = np.zeros((60, 50, 40), np.uint8)
    e = ellipsoid(9, 7, 6)
    if where == "at-the-border":
        e = e[4:]  # cut through: the organ has voxels on the volume's first slice
        assert e[0].any()
    lo = (0, 10, 5) if where == "at-the-border" else (20, 15, 12)
    lab[tuple(slice(a, a + n) for a, n in zip(lo, e.shape, strict=True))] = e * 3
    a = affine_from(rotation([1, 2, 3], 0.4) @ np.diag([0.7, 0.8, 2.5]), [-40.0, 12.0, 7.5])
    whole = mask_to_mesh(lab == 3, a, smooth_iterations=10)
    box = tuple(slice(x, x + n) for x, n in zip(lo, e.shape, strict=True))
    block = mask_to_mesh(lab[box] == 3, a, smooth_iterations=10, origin=[b.start for b in box])
    assert np.array_equal(block.faces, whole.faces)
    assert np.array_equal(block.vertices, whole.vertices)
    with pytest.raises(ValueError, match="origin"):
        mask_to_mesh(lab == 3, a, origin=(0.5, 0, 0))


@pytest.mark.parametrize("nudge", [0, 1], ids=["at-level", "one-float32-step-above"])
def test_probability_exactly_at_the_level_still_gives_a_watertight_mesh(tmp_path, nudge):
    """The model's probabilities are exactly 0.5 at some voxels (6 of 40 synthetic-heart
    predictions): marching cubes then put several vertices on the same point, and a tool that
    welds vertices by position (trimesh's default load, any STL reader) found edges with
    three or four faces."""
    i, j, k = np.mgrid[:21, :21, :21]
    r = np.sqrt((i - 10.0) ** 2 + (j - 10.0) ** 2 + (k - 10.0) ** 2)
    prob = (1 / (1 + np.exp((r - 5.0) / 1.5))).astype(np.float32)  # r = 5 (3-4-0 voxels): 0.5
    at_level = prob == 0.5
    assert at_level.sum() == 30
    for _ in range(nudge):
        prob[at_level] = np.nextafter(prob[at_level], np.float32(1))
    affine = affine_from(rotation((1, 2, 3), 0.7) @ np.diag((0.9, 1.1, 1.3)), (210.0, -95.0, 40.0))
    mesh = mask_to_mesh(prob, affine, level=0.5)
    welded = trimesh.Trimesh(mesh.vertices, mesh.faces)  # process=True merges equal vertices
    assert welded.is_watertight and welded.is_winding_consistent
    assert mesh.volume() > 0 and welded.volume == pytest.approx(mesh.volume(), rel=1e-6)
    save_mesh(mesh, tmp_path / "organ.stl")  # triangles only: a reader welds by position
    assert trimesh.load(tmp_path / "organ.stl").is_watertight
    # The surface has hardly moved: within a tenth of a voxel of marching cubes on the values as
    # given (0.07 mm at most here, next to a voxel whose value is within 0.02 of the level).
    verts, _, _, _ = marching_cubes(prob, 0.5)
    dist, _ = cKDTree(voxel_to_world(affine, verts)).query(mesh.vertices)
    assert dist.max() < 0.1 * 1.3


@pytest.mark.parametrize("suffix", sorted(MESH_FORMATS))
def test_export_round_trip_and_atomic_write(tmp_path, ell, suffix):
    mask, affine, _, _ = ell
    mesh = mask_to_mesh(mask[::2, ::2, ::2], affine @ np.diag((2, 2, 2, 1)))
    out = tmp_path / "sub" / f"organ{suffix.upper() if suffix == '.stl' else suffix}"
    (tmp_path / "sub").mkdir()
    out.write_text("old content")  # overwriting an existing file must work
    assert save_mesh(mesh, out) == out
    assert [p.name for p in (tmp_path / "sub").iterdir()] == [out.name]  # no temp file left
    back = load_mesh(out)
    assert back.n_vertices == mesh.n_vertices and back.n_faces == mesh.n_faces
    assert np.allclose(back.bounds(), mesh.bounds(), atol=1e-3)
    assert back.volume() == pytest.approx(mesh.volume(), rel=1e-5)  # winding survives
    if suffix in (".glb", ".ply"):  # binary float32 formats keep vertices bit for bit
        assert np.array_equal(back.vertices, mesh.vertices)


def _slicer_header(path) -> str:
    """Where 3D Slicer looks for "SPACE=RAS" / "SPACE=LPS" (vtkMRMLModelStorageNode): the
    comments of a .ply header, the comment lines heading an .obj, an .stl's header."""
    raw = path.read_bytes()
    if path.suffix == ".ply":
        lines = raw.split(b"end_header")[0].decode("ascii").splitlines()
        return "\n".join(x for x in lines if x.startswith("comment "))
    if path.suffix == ".obj":
        lines = raw.decode("ascii").splitlines()
        return "\n".join(x for x in lines[: [x.startswith("#") for x in lines].index(False)])
    assert not raw.startswith(b"solid")  # binary, not to be read as ASCII STL
    return raw[:80].decode("ascii")


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".stl"])
def test_mesh_files_tell_3d_slicer_they_are_ras(tmp_path, ell, suffix):
    """Slicer 4.11+ reads a mesh file without "SPACE=..." in its header as LPS: an RAS mesh
    came in mirrored (x and y negated) against the NIfTI volume it was made from."""
    mask, affine, _, _ = ell
    mesh = mask_to_mesh(mask[::3, ::3, ::3], affine @ np.diag((3, 3, 3, 1)))
    out = save_mesh(mesh, tmp_path / f"organ{suffix}")
    assert "SPACE=RAS" in _slicer_header(out) and "SPACE=LPS" not in _slicer_header(out)
    back = load_mesh(out)  # the note changes nothing for other readers
    assert np.allclose(back.vertices[back.faces], mesh.vertices[mesh.faces], atol=1e-5)


def test_file_errors(tmp_path):
    mesh = Mesh(np.eye(3), [[0, 1, 2]])
    with pytest.raises(ValueError, match=r"organ\.vtk.*\.glb, \.obj, \.ply, \.stl"):
        save_mesh(mesh, tmp_path / "organ.vtk")
    with pytest.raises(InputError, match="not found"):
        load_mesh(tmp_path / "missing.ply")
    bad = tmp_path / "garbage.glb"
    bad.write_bytes(b"this is not a glb file")
    with pytest.raises(InputError, match="garbage.glb"):
        load_mesh(bad)
    # no triangles: refused, as load_mesh refuses such a file (it wrote one and said nothing)
    empty = Mesh(np.zeros((0, 3)), np.zeros((0, 3), int))
    for suffix in MESH_FORMATS:
        with pytest.raises(ValueError, match=rf"organ\{suffix}: the mesh is empty"):
            save_mesh(empty, tmp_path / f"organ{suffix}")
    with pytest.raises(ValueError, match=r"organs\.glb: the mesh 'liver' is empty"):
        save_scene([("heart", mesh, None), ("liver", empty, None)], tmp_path / "organs.glb")
    assert list(tmp_path.iterdir()) == [bad]


def test_bad_masks_and_meshes_raise():
    with pytest.raises(ValueError, match="empty"):
        mask_to_mesh(np.zeros((5, 5, 5), bool), np.eye(4))
    with pytest.raises(ValueError, match="3D"):
        mask_to_mesh(np.ones((5, 5), bool), np.eye(4))
    with pytest.raises(ValueError, match="affine"):
        mask_to_mesh(np.ones((3, 3, 3), bool), np.diag((1.0, 0.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match="face indices"):
        Mesh(np.zeros((3, 3)), [[0, 1, 3]])
    square = Mesh(np.array([[0, 0, 0], [2, 0, 0], [2, 3, 0], [0, 3, 0]]), [[0, 1, 2], [0, 2, 3]])
    assert square.area() == pytest.approx(6.0) and square.n_faces == 2


def test_label_meshes_from_class_boxes_equal_the_whole_maps(monkeypatch):
    """label_meshes meshes each class from its find_objects box (mask_to_mesh(origin=)): the
    same vertices and faces as meshing ``labels == c`` of the whole map, with no np.unique
    (nor a per-class comparison) over the map; classes touching the border included."""
    from core.labelmap import class_boxes
    from core.mesh import label_meshes, mask_to_mesh

    rng = np.random.default_rng(3)
    a = np.diag([0.7, 0.8, 1.5, 1.0])
    a[:3, 3] = (-10.0, 4.0, 2.0)
    for dtype in (np.uint8, np.uint16, np.int32):
        labels = np.zeros((40, 36, 30), dtype)
        for c in (1, 2, 4, 9):
            lo = rng.integers(0, 24, size=3)
            hi = lo + rng.integers(3, 14, size=3)
            labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = c
        labels[0:3, 5:9, 27:30] = 4  # a second part of class 4, on the border
        expected = [
            (c, mask_to_mesh(labels == c, a, smooth_iterations=5))
            for c in sorted(set(np.unique(labels).tolist()) - {0})
        ]
        assert sorted(class_boxes(labels)) == [c for c, _ in expected]

        def no_unique(*_a, **_k):
            raise AssertionError("np.unique over the map")

        with monkeypatch.context() as m:
            m.setattr(np, "unique", no_unique)
            got = label_meshes(labels, a, smooth_iterations=5)
        assert [c for c, _ in got] == [c for c, _ in expected]
        for (_, g), (_, e) in zip(got, expected, strict=True):
            assert np.array_equal(g.vertices, e.vertices) and np.array_equal(g.faces, e.faces)
    # a float map (not find_objects' kind) still meshes, through the whole-map path
    got = label_meshes(labels.astype(np.float32), a, smooth_iterations=0)
    assert [c for c, _ in got] == [1, 2, 4, 9]
