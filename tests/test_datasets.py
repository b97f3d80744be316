"""Dataset discovery for the TotalSegmentator, nnU-Net and flat layouts."""

import pytest
from conftest import shared_dataset, write_case

from core.datasets import detect_layout, discover, label_names_for
from core.errors import InputError


def test_totalseg_layout(totalseg_dir):
    idx = discover(totalseg_dir)
    assert idx.layout == "totalseg"
    assert [c.case_id for c in idx.cases] == ["case0", "case1", "case2"]
    assert all(c.image.name == f"{c.case_id}-image.nii.gz" for c in idx.cases)
    assert idx.problems == ()


def test_nnunet_layout_with_both_suffixes_and_label_names(nnunet_dir):
    idx = discover(nnunet_dir)
    assert idx.layout == "nnunet"
    assert [c.case_id for c in idx.cases] == ["pt_0", "pt_1", "pt_2"]
    assert idx.get("pt_1").image.name == "pt_1_0000.nii"
    assert idx.label_names == {1: "Liver", 2: "Spleen"}
    assert idx.get("pt_0").label_names == {1: "Liver", 2: "Spleen"}


def test_flat_layout(flat_dir):
    idx = discover(flat_dir)
    assert idx.layout == "flat"
    assert [c.case_id for c in idx.cases] == ["vol0", "vol1"]


def test_a_label_file_gets_its_datasets_names(nnunet_dir, flat_dir, tmp_path):
    """The napari reader names a label file's classes from its dataset's files."""
    assert label_names_for(nnunet_dir / "labelsTr" / "pt_0.nii.gz") == {1: "Liver", 2: "Spleen"}
    assert label_names_for(flat_dir / "labels" / "vol0.nii.gz") == {}  # no label_names.json
    names = flat_dir / "label_names.json"
    names.write_text('{"vol0": {"1": "spleen", "2": "liver"}, "vol1": {"1": "aorta"}}')
    assert label_names_for(flat_dir / "labels" / "vol1.nii.gz") == {1: "aorta"}
    assert label_names_for(flat_dir / "labels" / "other.nii.gz") == {}
    names.write_text('{"1": "LA", "2": "LV"}')  # one mapping for every case
    assert label_names_for(flat_dir / "labels" / "vol0.nii.gz") == {1: "LA", 2: "LV"}
    names.write_text("{not json")  # unreadable: no names, no error
    assert label_names_for(flat_dir / "labels" / "vol0.nii.gz") == {}
    assert discover(flat_dir).problems  # while discover reports it
    assert label_names_for(tmp_path / "seg.nii.gz") == {}


def test_missing_partners_are_reported(totalseg_dir, nnunet_dir, flat_dir):
    (totalseg_dir / "case1" / "case1-label.nii.gz").unlink()
    idx = discover(totalseg_dir)
    assert [c.case_id for c in idx.cases] == ["case0", "case2"]
    assert any("case1-image.nii.gz" in p and "without label" in p for p in idx.problems)
    assert len(discover(totalseg_dir, require_labels=False)) == 3

    (nnunet_dir / "imagesTr" / "pt_2_0000.nii.gz").unlink()
    idx = discover(nnunet_dir)
    assert [c.case_id for c in idx.cases] == ["pt_0", "pt_1"]
    assert any("pt_2.nii.gz" in p and "without image" in p for p in idx.problems)

    write_case(flat_dir / "volumes" / "lonely.nii.gz", flat_dir / "tmp" / "x.nii.gz")
    idx = discover(flat_dir)
    assert any("lonely.nii.gz" in p for p in idx.problems)


def test_layout_override_and_unknown(tmp_path, flat_dir):
    assert discover(flat_dir, layout="flat").layout == "flat"
    with pytest.raises(InputError, match="not an nnU-Net folder"):
        discover(flat_dir, layout="nnunet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no dataset layout recognised") as exc:
        detect_layout(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(exc.value)
    with pytest.raises(InputError, match="not found"):
        discover(tmp_path / "missing")


def test_real_openkbp_val_nnunet():
    root = shared_dataset("openkbp_val")
    idx = discover(root)
    assert idx.layout == "nnunet"
    assert len(idx) == 33
    assert idx.label_names[1] == "Brainstem" and idx.label_names[7] == "Mandible"


def test_real_totalseg_examples_flat():
    root = shared_dataset("totalseg_examples")
    idx = discover(root)
    assert idx.layout == "flat"
    assert {c.case_id for c in idx.cases} == {
        "ts_ct_abdomen",
        "ts_ct_abdomen_small",
        "ts_mr_abdomen",
    }
    # Per-case label names from label_names.json (ids differ between cases).
    assert idx.get("ts_ct_abdomen").label_names[1] == "spleen"


@pytest.mark.parametrize("layout", ["totalseg", "nnunet", "flat"])
def test_a_nifti_suffix_in_capitals_is_found_in_every_layout(tmp_path, layout):
    """Files named CT.NII.GZ (nibabel reads them) were 'not a NIfTI file' and their cases
    invisible to discovery; the suffix is now matched in any case, and the files load."""
    import numpy as np

    from core.io import load_pair, save_label, strip_nifti_suffix

    names = {
        "totalseg": ("c0/c0-image.NII.GZ", "c0/c0-label.Nii.Gz"),
        "nnunet": ("imagesTr/c0_0000.NII.GZ", "labelsTr/c0.NII"),
        "flat": ("volumes/c0.NII.GZ", "labels/c0.nii.GZ"),
    }[layout]
    write_case(tmp_path / "i.nii.gz", tmp_path / "l.nii.gz")
    for src, name in zip(("i.nii.gz", "l.nii.gz"), names, strict=True):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / src).rename(tmp_path / name)  # nib.save would rewrite some suffixes
    idx = discover(tmp_path)
    assert idx.layout == layout and [c.case_id for c in idx.cases] == ["c0"], idx.problems
    case = idx.cases[0]
    assert (case.image, case.label) == (tmp_path / names[0], tmp_path / names[1])
    image, label = load_pair(case.image, case.label)
    assert label.data.any() and image.shape == label.shape
    assert strip_nifti_suffix("A.NII.GZ") == "A" and strip_nifti_suffix(".NII") is None
    out = save_label(label, tmp_path / "OUT.NII.GZ")
    assert out.read_bytes()[:2] == b"\x1f\x8b"  # gzipped, as the name says
    assert np.array_equal(load_pair(case.image, out)[1].data, label.data)
    from core.io import load_image

    (tmp_path / "bad.NII").write_bytes(b"not a NIfTI file" * 40)
    with pytest.raises(InputError, match=r"bad.NII: not a valid NIfTI file"):
        load_image(tmp_path / "bad.NII")
    (tmp_path / "cut.NII.GZ").write_bytes(out.read_bytes()[:60])
    with pytest.raises(InputError, match=r"cut.NII.GZ: corrupt or truncated gzip data"):
        load_image(tmp_path / "cut.NII.GZ")
