"""napari plugin I/O: the NIfTI reader, the Labels and Surface writers, the sample data, and
the manifest's contributions (every widget docks from it)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from conftest import oblique_affine, save_nifti, two_organs

pytest.importorskip("napari")
pytestmark = [
    pytest.mark.gui,
    # napari's 2D view of an oblique volume ignores the out-of-plane tilt, and says so
    pytest.mark.filterwarnings("ignore:Non-orthogonal slicing:UserWarning"),
]

PLUGIN = "sam3d-napari"
WIDGETS = ("Reconstruct (click to 3D)", "Fine-tune (LoRA)", "Compare with ground truth")


def _errors():
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records if n.severity == "error"]


# --------------------------------------------------------------------------------------------
# pure transform helpers (no viewer)


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([2.0, 2.0, 3.0, 1.0]),
        oblique_affine(),
        oblique_affine(spacing=(0.7, 1.1, 5.0), angles=(0.6, 0.1, -0.4)),
        oblique_affine() @ np.diag([-1.0, 1.0, 1.0, 1.0]),  # left-handed
        oblique_affine() @ np.array([[1, 0.2, 0, 0], [0, 1, 0.1, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]),
    ],
    ids=["diagonal", "oblique", "oblique-2", "left-handed", "sheared"],
)
def test_napari_layer_placed_with_the_affine_maps_voxels_exactly_like_the_affine(affine):
    from napari.layers import Image

    from core.io import voxel_to_world, world_to_voxel
    from sam3d_napari._layers import layer_affine, layer_transform

    layer = Image(np.zeros((6, 7, 8), np.float32), **layer_transform(affine))
    np.testing.assert_allclose(layer_affine(layer), affine, atol=1e-9)
    ijk = np.array([[0, 0, 0], [5, 6, 7], [2.5, 1.25, 3.0]])
    for p in ijk:  # napari's own data -> world agrees with the NIfTI affine
        np.testing.assert_allclose(layer.data_to_world(p), voxel_to_world(affine, p), atol=1e-6)
        np.testing.assert_allclose(world_to_voxel(affine, layer.data_to_world(p)), p, atol=1e-6)


# --------------------------------------------------------------------------------------------
# reader and writers through the viewer


@pytest.fixture
def oblique_pair(tmp_path):
    img, lab = two_organs(shape=(24, 28, 20))
    a = oblique_affine(spacing=(1.5, 2.0, 3.0))
    img_path = save_nifti(img, a, tmp_path / "ct.nii.gz")
    lab_path = save_nifti(lab, a, tmp_path / "ct-label.nii.gz")
    # the header stores the affine in float32: that is the file's exact affine
    return img_path, lab_path, img, lab, nib.load(str(img_path)).affine


def test_reader_opens_image_and_labels_in_world_mm(make_napari_viewer, oblique_pair):
    from core.io import voxel_to_world
    from sam3d_napari._layers import layer_affine

    img_path, lab_path, img, lab, a = oblique_pair
    viewer = make_napari_viewer()
    (image,) = viewer.open(img_path, plugin=PLUGIN)
    (labels,) = viewer.open(lab_path, plugin=PLUGIN)
    assert type(image).__name__ == "Image" and type(labels).__name__ == "Labels"
    np.testing.assert_allclose(np.asarray(image.data), img, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(labels.data), lab)
    for layer in (image, labels):
        np.testing.assert_allclose(layer_affine(layer), a, atol=1e-9)
        np.testing.assert_array_equal(layer.metadata["affine"], a)
    # the same world point shows the same voxel in both layers and in the file's own affine
    v = np.array([10.0, 7.0, 4.0])
    np.testing.assert_allclose(image.world_to_data(voxel_to_world(a, v)), v, atol=1e-6)
    np.testing.assert_allclose(labels.world_to_data(voxel_to_world(a, v)), v, atol=1e-6)


def test_an_image_of_a_dataset_that_declares_mr_opens_as_mr(make_napari_viewer, tmp_path):
    """nnU-Net's dataset.json says what channel 0 holds: the image layer keeps it, so
    Reconstruct starts on MR (not CT, which would warn at the first click)."""
    img, lab = two_organs()
    root = tmp_path / "Dataset001_Prostate"
    save_nifti(img, np.eye(4), root / "imagesTr" / "p_0000.nii.gz")
    save_nifti(img, np.eye(4), tmp_path / "loose" / "q.nii.gz")
    (root / "dataset.json").write_text('{"channel_names": {"0": "T2"}, "labels": {"A": 1}}')
    viewer = make_napari_viewer()
    (image,) = viewer.open(root / "imagesTr" / "p_0000.nii.gz", plugin=PLUGIN)
    (loose,) = viewer.open(tmp_path / "loose" / "q.nii.gz", plugin=PLUGIN)
    assert image.metadata["modality"] == "mr" and "modality" not in loose.metadata
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Reconstruct (click to 3D)")
    widget.image.value = image
    assert widget.modality.value == "mr"


def test_a_head_ct_in_a_field_of_air_opens_with_soft_tissue_grey(make_napari_viewer, tmp_path):
    """OpenKBP's head CTs are 90-98 % padding air at -1024 HU: the window's top at the 99.5th
    percentile of every voxel fell in soft tissue (pt_203: -1024..33) and the head opened
    white. The window (core.intensity.display_window) leaves the minimum out of its top."""
    vol = np.full((64, 64, 64), -1024.0, np.float32)
    r = np.linalg.norm(np.indices(vol.shape) - 31.5, axis=0)
    vol[r < 10] = 1000.0  # skull
    vol[r < 9] = 40.0  # soft tissue
    save_nifti(vol, np.eye(4), tmp_path / "head.nii.gz")
    viewer = make_napari_viewer()
    (image,) = viewer.open(tmp_path / "head.nii.gz", plugin=PLUGIN)
    lo, hi = image.contrast_limits
    grey = (np.array([-1024.0, 40.0, 1000.0]) - lo) / (hi - lo)
    assert grey[0] <= 0.0 and 0.3 < grey[1] < 0.7 and grey[2] >= 0.95


@pytest.mark.parametrize("folder", ["labels", "labelsTr", "labelsTs", "segmentations"])
def test_a_float_label_map_in_a_labels_folder_opens_as_labels(make_napari_viewer, tmp_path, folder):
    """Real label maps are often stored as float64 holding integers, under the case's plain
    name in a labels folder (the flat layout, nnU-Net's labelsTr/): the folder marks them as
    labels; the same float image elsewhere stays an Image, and so does a CT in a labels
    folder (too many distinct values)."""
    img, lab = two_organs(shape=(24, 28, 20))
    a = np.diag([2.0, 2.0, 3.0, 1.0])
    in_folder = save_nifti(lab.astype(np.float64), a, tmp_path / folder / "case01.nii.gz")
    elsewhere = save_nifti(lab.astype(np.float64), a, tmp_path / "volumes" / "case01.nii.gz")
    ct = np.rint(img * 10).astype(np.float64)  # integer HU, many distinct values
    ct_in_folder = save_nifti(ct, a, tmp_path / folder / "ct.nii.gz")
    viewer = make_napari_viewer()
    (labels,) = viewer.open(in_folder, plugin=PLUGIN)
    assert type(labels).__name__ == "Labels"
    np.testing.assert_array_equal(np.asarray(labels.data), lab)
    (image,) = viewer.open(elsewhere, plugin=PLUGIN)
    (ct_layer,) = viewer.open(ct_in_folder, plugin=PLUGIN)
    assert type(image).__name__ == type(ct_layer).__name__ == "Image"


def test_an_eight_bit_image_opens_as_an_image_and_an_unnamed_label_map_as_labels(
    make_napari_viewer, tmp_path
):
    """An 8-bit export (uint8, at most 256 values) is an image to click on, not a label map;
    a uint8 label map under a plain name still opens as labels (its values form regions)."""
    img, lab = two_organs(shape=(24, 28, 20))
    a = np.diag([2.0, 2.0, 3.0, 1.0])
    u8 = np.clip((img + 150) / 450 * 255, 0, 255).astype(np.uint8)
    grey = save_nifti(u8, a, tmp_path / "data" / "case01.nii.gz")
    organs = save_nifti(lab, a, tmp_path / "data" / "case01_organs.nii.gz")
    viewer = make_napari_viewer()
    (image,) = viewer.open(grey, plugin=PLUGIN)
    (labels,) = viewer.open(organs, plugin=PLUGIN)
    assert type(image).__name__ == "Image" and type(labels).__name__ == "Labels"
    np.testing.assert_array_equal(np.asarray(image.data), u8)


def _eight_bit_ultrasound(shape=(96, 80, 24), seed=0) -> np.ndarray:
    """An 8-bit ultrasound volume: speckle in a fan-shaped sector, zero outside it."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    speckle = rng.rayleigh(1.0, shape) * (1 + 0.5 * ndimage.gaussian_filter(rng.random(shape), 6))
    us = ndimage.gaussian_filter(speckle, (1.2, 0.8, 0.6))
    i, j, _ = np.indices(shape)
    sector = np.abs(j - shape[1] // 2) < 0.45 * i + 2
    return (np.clip(us / np.percentile(us, 99.5), 0, 1) * 255).astype(np.uint8) * sector


def test_a_label_map_drawn_on_some_slices_opens_as_labels_and_8_bit_ultrasound_as_an_image(
    make_napari_viewer, tmp_path
):
    """The reader told a plain-named uint8 label map from an 8-bit image by its values
    repeating along the last axis only: a map drawn on every sixth axial slice (one voxel
    thick along it) opened as an image, and an 8-bit ultrasound whose slices were repeated
    along it (a coarse axis filled in), or a one-slice 8-bit picture, as labels. Now the
    regions count along two axes; an 8-bit ultrasound volume opens as an image either way."""
    from core.synthetic import make_heart_phantom

    _, heart = make_heart_phantom(4)
    drawn = np.zeros_like(heart.data)
    drawn[:, :, 20:50:6] = heart.data[:, :, 20:50:6]
    us = _eight_bit_ultrasound()
    a = np.diag([0.5, 0.5, 1.0, 1.0])
    files = {
        "drawn": save_nifti(drawn, heart.affine, tmp_path / "data" / "case01_lv.nii.gz"),
        "one slice drawn": save_nifti(
            heart.data[:, :, 32:33], heart.affine, tmp_path / "data" / "case02_lv.nii.gz"
        ),
        "ultrasound": save_nifti(us, a, tmp_path / "data" / "us01.nii.gz"),
        "repeated slices": save_nifti(
            np.repeat(us, 3, axis=2),
            a @ np.diag([1, 1, 1 / 3, 1]),
            tmp_path / "data" / "us02.nii.gz",
        ),
        "one slice": save_nifti(us[:, :, 12:13], a, tmp_path / "data" / "us03.nii.gz"),
    }
    viewer = make_napari_viewer()
    kinds = {k: type(viewer.open(p, plugin=PLUGIN)[0]).__name__ for k, p in files.items()}
    assert kinds == {
        "drawn": "Labels",
        "one slice drawn": "Labels",
        "ultrasound": "Image",
        "repeated slices": "Image",
        "one slice": "Image",
    }


def test_labels_round_trip_keeps_data_and_affine_exactly(
    make_napari_viewer, oblique_pair, tmp_path
):
    _, lab_path, _, lab, a = oblique_pair
    viewer = make_napari_viewer()
    (labels,) = viewer.open(lab_path, plugin=PLUGIN)
    out = tmp_path / "saved.nii.gz"
    viewer.layers.selection = {labels}
    written = viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    assert [str(p) for p in written] == [str(out)]
    img = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(img.dataobj), lab)
    np.testing.assert_array_equal(img.affine, nib.load(str(lab_path)).affine)
    assert img.get_data_dtype() == np.uint8
    (again,) = viewer.open(out, plugin=PLUGIN)
    np.testing.assert_array_equal(np.asarray(again.data), lab)
    np.testing.assert_array_equal(again.metadata["affine"], labels.metadata["affine"])
    assert not list(tmp_path.glob(".tmp-*")), "atomic writes leave no temporary file"


def test_labels_from_a_non_ras_file_go_back_in_its_own_orientation(make_napari_viewer, tmp_path):
    _, lab = two_organs(shape=(24, 28, 20))
    lps = np.diag([-2.0, -2.0, 3.0, 1.0])
    lps[:3, 3] = [30.0, 40.0, -10.0]
    src = save_nifti(lab, lps, tmp_path / "lps-label.nii.gz")
    viewer = make_napari_viewer()
    (labels,) = viewer.open(src, plugin=PLUGIN)
    assert labels.metadata["affine"][0, 0] > 0  # shown in canonical RAS
    out = tmp_path / "back.nii.gz"
    viewer.layers.selection = {labels}
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    img = nib.load(str(out))
    np.testing.assert_array_equal(img.affine, lps)
    np.testing.assert_array_equal(np.asarray(img.dataobj), lab)


def test_surface_writer_saves_world_mm_meshes(make_napari_viewer, tmp_path):
    from core.mesh import load_mesh, mask_to_mesh

    _, lab = two_organs(shape=(24, 28, 20))
    mesh = mask_to_mesh(lab == 1, oblique_affine())
    viewer = make_napari_viewer()
    layer = viewer.add_surface((mesh.vertices, mesh.faces), name="organ")
    viewer.layers.selection = {layer}
    for suffix in (".glb", ".obj", ".ply", ".stl"):
        out = tmp_path / f"organ{suffix}"
        viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
        back = load_mesh(out)
        assert back.n_faces == mesh.n_faces, suffix
        np.testing.assert_allclose(back.bounds(), mesh.bounds(), atol=1e-3)
        assert back.volume() == pytest.approx(mesh.volume(), rel=1e-4)


def test_labels_save_as_one_mesh_per_class_in_world_mm(make_napari_viewer, oblique_pair, tmp_path):
    """Several organs in one label map: saved as .glb, one named node per class in the layer's
    colours; as .ply (one mesh per file), one file per class; each in world mm, as the mesh
    of that class from the file's own affine. An empty map is refused."""
    import trimesh

    from core.mesh import load_mesh, mask_to_mesh

    _, lab_path, _, lab, a = oblique_pair
    viewer = make_napari_viewer()
    (labels,) = viewer.open(lab_path, plugin=PLUGIN)
    labels.metadata["label_names"] = {1: "left kidney", 2: "spleen"}
    viewer.layers.selection = {labels}
    expected = {c: mask_to_mesh(lab == c, a, smooth_iterations=5) for c in (1, 2)}

    written = viewer.layers.save(str(tmp_path / "organs.glb"), selected=True, plugin=PLUGIN)
    scene = trimesh.load(written[0], force="scene")
    assert sorted(scene.geometry) == ["1_left_kidney", "2_spleen"]
    for c, name in ((1, "1_left_kidney"), (2, "2_spleen")):
        part = scene.geometry[name]
        np.testing.assert_allclose(part.bounds, expected[c].bounds(), atol=1e-3)
        colour = np.asarray(labels.colormap.map(np.array([c]))).reshape(-1)[:3] * 255
        np.testing.assert_allclose(part.visual.material.baseColorFactor[:3], colour, atol=1)

    written = viewer.layers.save(str(tmp_path / "organs.ply"), selected=True, plugin=PLUGIN)
    assert sorted(os.path.basename(p) for p in written) == [
        "organs_1_left_kidney.ply",
        "organs_2_spleen.ply",
    ]
    for c, path in zip((1, 2), sorted(written), strict=True):
        back = load_mesh(path)
        np.testing.assert_allclose(back.bounds(), expected[c].bounds(), atol=1e-3)
        assert back.volume() == pytest.approx(expected[c].volume(), rel=1e-4)

    # nothing labelled, a float map, a negative label: napari's save raises the one line
    # (a ValueError was taken for "no writer" and the user read only "not a valid writer")
    from sam3d_napari._writer import SaveError

    empty = viewer.add_labels(np.zeros((6, 6, 6), np.uint8), name="empty")
    negative = viewer.add_labels(np.full((6, 6, 6), -1, np.int16), name="negative")
    for layer, name, problem in [
        (empty, "empty.glb", r"empty\.glb: the label map is empty: nothing to save as meshes"),
        (negative, "negative.nii.gz", r"negative\.nii\.gz: label map has negative values"),
        (negative, "negative.glb", r"negative\.glb: label map has negative values"),
    ]:
        viewer.layers.selection = {layer}
        with pytest.raises(SaveError, match=problem):
            viewer.layers.save(str(tmp_path / name), selected=True, plugin=PLUGIN)
    assert not list(tmp_path.glob("empty*")) and not list(tmp_path.glob("negative*"))


def test_an_empty_surface_is_refused_with_its_reason(tmp_path):
    """A Surface with no triangles wrote an empty file without a word (which load_mesh and
    other tools then refuse); now the save says why, as for an empty label map."""
    from sam3d_napari._writer import SaveError, write_surface

    for suffix in (".glb", ".ply", ".stl"):
        with pytest.raises(SaveError, match=rf"organ\{suffix}: the mesh is empty"):
            write_surface(
                str(tmp_path / f"organ{suffix}"), (np.zeros((0, 3)), np.zeros((0, 3))), {}
            )
    assert list(tmp_path.iterdir()) == []


def test_labels_as_meshes_take_any_names_and_no_wide_copy(tmp_path):
    """label_names that are not {class id: name} (a name -> id mapping, a None name) only
    lose their decoration, never the save (it raised 'invalid literal for int()'); a bool map
    saves as class 1; a CT-sized map is not copied to int64 (8 times its size, twice)."""
    import tracemalloc

    import trimesh

    from sam3d_napari._writer import write_labels_meshes

    lab = np.zeros((12, 12, 12), np.uint8)
    lab[2:6, 2:6, 2:6], lab[7:11, 7:11, 7:11] = 1, 2
    names = {"liver": 1, "2": "spleen", 1: None}
    (path,) = write_labels_meshes(
        str(tmp_path / "o.glb"), lab, {"metadata": {"label_names": names}}
    )
    assert sorted(trimesh.load(path, force="scene").geometry) == ["2_spleen", "class_1"]
    # names with spaces at the end or inside give clean file names, as the web's downloads
    paths = write_labels_meshes(
        str(tmp_path / "o.ply"),
        lab,
        {"metadata": {"label_names": {1: "left  kidney", 2: "spleen "}}},
    )
    assert sorted(os.path.basename(p) for p in paths) == ["o_1_left_kidney.ply", "o_2_spleen.ply"]
    (path,) = write_labels_meshes(str(tmp_path / "b.glb"), lab == 1, {})
    assert sorted(trimesh.load(path, force="scene").geometry) == ["class_1"]

    big = np.zeros((192, 192, 192), np.uint8)  # 7 MB
    big[90:100, 90:100, 90:100] = 3
    tracemalloc.start()
    try:
        write_labels_meshes(str(tmp_path / "big.ply"), big, {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * big.nbytes, peak


def _bad_file(tmp_path, kind):
    path = tmp_path / f"bad-{kind}.nii.gz"
    if kind == "corrupt":
        good = save_nifti(np.zeros((8, 8, 8), np.float32), np.eye(4), tmp_path / "g.nii.gz")
        path.write_bytes(good.read_bytes()[:60])
    elif kind == "not-nifti":
        path = tmp_path / "notes.nii"
        path.write_text("this is not an image\n")
    elif kind == "2d":
        save_nifti(np.zeros((8, 8), np.float32), np.eye(4), path)
    elif kind == "4d":
        save_nifti(np.zeros((8, 8, 8, 3), np.float32), np.eye(4), path)
    return path  # "missing": never written


def test_bad_files_give_one_line_naming_the_file_and_no_layer(make_napari_viewer, tmp_path):
    from sam3d_napari._reader import napari_get_reader

    viewer = make_napari_viewer()
    for kind in ("corrupt", "not-nifti", "2d", "4d", "missing"):
        path = _bad_file(tmp_path, kind)
        reader = napari_get_reader(str(path))
        assert reader is not None
        before = len(_errors())
        assert reader(str(path)) == [(None,)], kind  # napari's "read, nothing to add"
        errors = _errors()[before:]
        assert len(errors) == 1, kind
        assert str(path) in errors[0] and "\n" not in errors[0], errors[0]
    # through napari's own open: still no traceback, no layer
    viewer.open(_bad_file(tmp_path, "corrupt"), plugin=PLUGIN)
    assert len(viewer.layers) == 0


def test_reader_declines_other_files():
    from sam3d_napari._reader import napari_get_reader

    assert napari_get_reader("image.png") is None
    assert napari_get_reader(["a.nii.gz", "b.tif"]) is None
    assert napari_get_reader(["a.nii.gz", "b.nii"]) is not None


# --------------------------------------------------------------------------------------------
# manifest


def test_sample_data_opens_ct_and_labels_on_one_grid(make_napari_viewer):
    from core.synthetic import HEART_LABELS
    from sam3d_napari._layers import layer_affine

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "heart")
    image, labels = viewer.layers
    assert type(image).__name__ == "Image" and type(labels).__name__ == "Labels"
    assert image.data.shape == labels.data.shape == (64, 64, 64)
    np.testing.assert_array_equal(layer_affine(image), layer_affine(labels))
    assert set(np.unique(labels.data)) == {0, *HEART_LABELS}
    assert labels.metadata["label_names"][2] == "LV"


def test_every_widget_docks_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "heart")
    for name in WIDGETS:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        assert dock is not None and widget.viewer is viewer
    assert any(lyr.name.endswith("prompts") for lyr in viewer.layers)  # Reconstruct made it
