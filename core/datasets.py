"""Dataset discovery for the three folder layouts users bring.

- ``totalseg``: TotalSegmentator case folders, ``<root>/<case>/<case>-image.nii.gz`` and
  ``<root>/<case>/<case>-label.nii.gz``.
- ``nnunet``: nnU-Net v2, ``imagesTr/<case>_0000.nii.gz`` and ``labelsTr/<case>.nii.gz``, with
  label names from ``dataset.json`` when present.
- ``flat``: ``volumes/<name>.nii[.gz]`` and ``labels/<name>.nii[.gz]``, with optional
  ``label_names.json`` (one mapping, or one per case).

A dataset may declare its modality in ``dataset.json`` at its root, as nnU-Net does:
``channel_names`` (v2) or ``modality`` (v1), channel ``"0"`` (the channel the model reads), e.g.
``"CT"``, ``"MRI"``, ``"T2"`` or ``"US"`` (:func:`modality_from_channel_name`). Front ends use it
when the user picks no modality (:func:`declared_modality`, :func:`resolve_modality`).

``.nii`` and ``.nii.gz`` are both accepted everywhere. An image without its label (or a label
without its image) is reported in :attr:`DatasetIndex.problems`, never dropped silently.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InputError
from core.io import strip_nifti_suffix

__all__ = [
    "LAYOUTS",
    "Case",
    "DatasetIndex",
    "dataset_modality",
    "declared_modality",
    "detect_layout",
    "discover",
    "label_names_for",
    "modality_from_channel_name",
    "resolve_modality",
]

LAYOUTS = ("totalseg", "nnunet", "flat")


@dataclass(frozen=True)
class Case:
    """One image and its label map (``label`` is None for unlabelled data)."""

    case_id: str
    image: Path
    label: Path | None
    label_names: dict[int, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class DatasetIndex:
    """What :func:`discover` found.

    Attributes
    ----------
    root : the dataset folder
    layout : one of :data:`LAYOUTS`
    cases : complete cases, sorted by id
    problems : one line per file that could not be paired or read
    label_names : dataset-wide label id -> name (empty when unknown)
    modality : the modality ``dataset.json`` declares for channel 0 ("ct", "mr" or "us"),
        None when it declares none (or one this project cannot map)
    declared_channel : that channel's name as written (e.g. "T2"), None without one
    """

    root: Path
    layout: str
    cases: tuple[Case, ...]
    problems: tuple[str, ...] = ()
    label_names: dict[int, str] = field(default_factory=dict)
    modality: str | None = None
    declared_channel: str | None = None

    def __len__(self) -> int:
        return len(self.cases)

    def get(self, case_id: str) -> Case:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise KeyError(case_id)


def _listdir(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except PermissionError as exc:
        raise InputError(folder, "folder is not readable (permission denied)") from exc
    except NotADirectoryError as exc:
        raise InputError(folder, "is not a folder") from exc
    except FileNotFoundError as exc:
        raise InputError(folder, "folder not found") from exc


def _nifti_files(folder: Path) -> dict[str, Path]:
    """Stem -> path of the NIfTI files in a folder; a stem present as both .nii and .nii.gz
    keeps the .nii.gz (and the duplicate is ignored rather than failing)."""
    out: dict[str, Path] = {}
    for name in _listdir(folder):
        stem = strip_nifti_suffix(name)
        if stem is None or name.startswith("."):
            continue
        p = folder / name
        if stem not in out or name.lower().endswith(".nii.gz"):
            out[stem] = p
    return out


def _find_nifti(folder: Path, stem: str) -> Path | None:
    for suf in (".nii.gz", ".nii"):
        p = folder / f"{stem}{suf}"
        if p.is_file():
            return p
    # the suffix in another case (CT.NII.GZ): nibabel reads it, so do we
    p = _nifti_files(folder).get(stem) if folder.is_dir() else None
    return p if p is not None and p.is_file() else None


def _is_totalseg_case(folder: Path) -> bool:
    return (
        _find_nifti(folder, f"{folder.name}-image") is not None
        or _find_nifti(folder, f"{folder.name}-label") is not None
    )


def detect_layout(root: str | os.PathLike) -> str:
    """Guess the layout of a dataset folder.

    Raises
    ------
    InputError
        The folder is missing or unreadable, or matches none of the layouts.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(root, "dataset folder not found")
    if not root.is_dir():
        raise InputError(root, "is not a folder")
    names = set(_listdir(root))
    if "imagesTr" in names and (root / "imagesTr").is_dir():
        return "nnunet"
    if "volumes" in names and (root / "volumes").is_dir():
        return "flat"
    for name in sorted(names):
        sub = root / name
        if sub.is_dir() and _is_totalseg_case(sub):
            return "totalseg"
    raise InputError(
        root,
        "no dataset layout recognised: expected <case>/<case>-image.nii.gz case folders "
        "(totalseg), imagesTr/ + labelsTr/ (nnunet), or volumes/ + labels/ (flat)",
    )


def _names_from_mapping(mapping) -> dict[int, str]:
    """Accept {"1": "LA"} (id -> name) and nnU-Net v2's {"LA": 1} (name -> id)."""
    out: dict[int, str] = {}
    if not isinstance(mapping, dict):
        return out
    for k, v in mapping.items():
        if isinstance(v, int) or (isinstance(v, str) and v.isdigit() and not str(k).isdigit()):
            out[int(v)] = str(k)
        elif str(k).isdigit():
            out[int(k)] = str(v)
    out.pop(0, None)
    return dict(sorted(out.items()))


def _read_json(path: Path, problems: list[str]):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: unreadable JSON ({exc}); label names ignored")
        return None


def _flat_label_names(names_file: Path, problems: list[str]) -> tuple[dict, dict[int, str]]:
    """A flat dataset's ``label_names.json``: ({case: {id: name}}, {id: name}); one of the two
    is empty (a mapping per case, or one for all), both when there is no file."""
    if not names_file.is_file():
        return {}, {}
    data = _read_json(names_file, problems)
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return {k: _names_from_mapping(v) for k, v in data.items()}, {}
    return {}, _names_from_mapping(data)


def _dataset_json_names(root: Path, problems: list[str]) -> dict[int, str]:
    """The ``labels`` of a dataset's ``dataset.json`` (nnU-Net v2), empty without one."""
    if not (root / "dataset.json").is_file():
        return {}
    data = _read_json(root / "dataset.json", problems)
    return _names_from_mapping((data if isinstance(data, dict) else {}).get("labels", {}))


# Channel names (nnU-Net's dataset.json) -> this project's modality. nnU-Net normalises a
# channel named "CT" by its HU statistics and any other by a z-score; the names below are the
# usual MR sequences and ultrasound spellings. Anything else (PET, "noNorm", ...) is not
# guessed: the user's (or the default) modality applies, and the engine warns on non-HU values.
_CT_NAMES = frozenset({"ct", "cta", "cect", "ncct", "ctac", "computed tomography"})
_MR_NAMES = frozenset({
    "mr", "mri", "mra", "t1", "t1w", "t1c", "t1ce", "t1gd", "t1-gd", "t1post", "t2", "t2w",
    "t2*", "flair", "t2-flair", "adc", "dwi", "pd", "pdw", "swi", "dixon", "bold", "cine",
    "magnetic resonance",
})  # fmt: skip
_US_NAMES = frozenset({"us", "ultrasound", "echo", "3dus", "3d us", "trus", "sonography"})


def modality_from_channel_name(name) -> str | None:
    """``"ct"``, ``"mr"`` or ``"us"`` for a channel name such as nnU-Net's ``"CT"``,
    ``"MRI"``, ``"T2"``, ``"FLAIR"`` or ``"US"`` (case and surrounding spaces ignored; a name
    starting with "MR" is MR); None when the name says neither."""
    if not isinstance(name, str):
        return None
    key = " ".join(name.strip().lower().replace("_", " ").split())
    if key in _CT_NAMES:
        return "ct"
    if key in _MR_NAMES or key.startswith("mr ") or key.startswith("mri "):
        return "mr"
    if key in _US_NAMES:
        return "us"
    return None


def _declared_channel(root: Path) -> str | None:
    """Channel 0's name in ``root/dataset.json`` (``channel_names`` of nnU-Net v2, ``modality``
    of v1), None without one (an unreadable file is reported by the label names' reading)."""
    if not (root / "dataset.json").is_file():
        return None
    data = _read_json(root / "dataset.json", [])
    if not isinstance(data, dict):
        return None
    for key in ("channel_names", "modality"):
        channels = data.get(key)
        if isinstance(channels, dict) and isinstance(channels.get("0"), str):
            return channels["0"]
    return None


def dataset_modality(root: str | os.PathLike) -> str | None:
    """The modality a dataset folder's ``dataset.json`` declares for channel 0, None when it
    declares none (no file, an unreadable one, or a name :func:`modality_from_channel_name`
    cannot map); never an error."""
    return modality_from_channel_name(_declared_channel(Path(root)))


def declared_modality(image_path: str | os.PathLike) -> str | None:
    """The modality a dataset declares for one of its image files, None when it declares none.

    The dataset folder is the image folder's parent (``imagesTr/`` of nnU-Net, ``volumes/`` of
    the flat layout, a TotalSegmentator case folder), as for :func:`label_names_for`.
    """
    return dataset_modality(Path(image_path).parent.parent)


def resolve_modality(chosen: str | None, declared: str | None, *, source="the dataset"):
    """The modality to run: ``chosen`` when given, else ``declared``, else CT.

    Returns ``(modality, warning)``; ``warning`` is a one-line note when ``chosen`` overrides
    a different declared modality (None otherwise).
    """
    if chosen is None:
        return (declared or "ct"), None
    if declared is not None and declared != chosen:
        return chosen, (
            f"{source} declares its images {declared.upper()} (dataset.json) but "
            f"{chosen.upper()} was chosen: running as {chosen.upper()}"
        )
    return chosen, None


def label_names_for(label_path: str | os.PathLike) -> dict[int, str]:
    """The label names a dataset gives one of its label files, empty when it gives none.

    The dataset folder is the label folder's parent (``labels/`` of the flat layout,
    ``labelsTr/`` of nnU-Net, a TotalSegmentator case folder): its ``label_names.json`` (one
    mapping, or one per case, keyed by the file's stem) or ``dataset.json``'s ``labels``.
    Unreadable files give no names, never an error.
    """
    path = Path(label_path)
    root, stem = path.parent.parent, strip_nifti_suffix(path.name) or path.name
    per_case, names = _flat_label_names(root / "label_names.json", [])
    if per_case:
        return per_case.get(stem, {})
    return names or _dataset_json_names(root, [])


def _discover_totalseg(root: Path, problems: list[str]) -> list[Case]:
    cases = []
    for name in _listdir(root):
        sub = root / name
        if not sub.is_dir() or name.startswith("."):
            continue
        img = _find_nifti(sub, f"{name}-image")
        lab = _find_nifti(sub, f"{name}-label")
        if img is None and lab is None:
            continue
        if img is None:
            problems.append(f"{lab}: label without image ({name}-image.nii.gz missing)")
            continue
        if lab is None:
            problems.append(f"{img}: image without label ({name}-label.nii.gz missing)")
            cases.append(Case(name, img, None))
            continue
        cases.append(Case(name, img, lab))
    return cases


def _discover_nnunet(root: Path, problems: list[str]) -> list[Case]:
    images = _nifti_files(root / "imagesTr")
    labels_dir = root / "labelsTr"
    labels = _nifti_files(labels_dir) if labels_dir.is_dir() else {}
    if not labels_dir.is_dir():
        problems.append(f"{labels_dir}: folder not found (no labels)")
    cases, seen = [], set()
    for stem, path in images.items():
        case_id, sep, channel = stem.rpartition("_")
        if not sep or len(channel) != 4 or not channel.isdigit():
            problems.append(f"{path}: not named <case>_0000.nii.gz (nnU-Net channel suffix)")
            continue
        if channel != "0000":
            continue  # extra modalities: the model reads channel 0
        seen.add(case_id)
        lab = labels.get(case_id)
        if lab is None:
            problems.append(f"{path}: image without label (labelsTr/{case_id}.nii.gz missing)")
        cases.append(Case(case_id, path, lab))
    for stem, path in labels.items():
        if stem not in seen:
            problems.append(f"{path}: label without image (imagesTr/{stem}_0000.nii.gz missing)")
    return cases


def _discover_flat(root: Path, problems: list[str]) -> tuple[list[Case], dict]:
    images = _nifti_files(root / "volumes")
    labels_dir = root / "labels"
    labels = _nifti_files(labels_dir) if labels_dir.is_dir() else {}
    if not labels_dir.is_dir():
        problems.append(f"{labels_dir}: folder not found (no labels)")
    per_case, global_names = _flat_label_names(root / "label_names.json", problems)
    cases = []
    for stem, path in images.items():
        lab = labels.get(stem)
        if lab is None:
            problems.append(f"{path}: image without label (labels/{stem}.nii.gz missing)")
        cases.append(Case(stem, path, lab, per_case.get(stem, global_names)))
    for stem, path in labels.items():
        if stem not in images:
            problems.append(f"{path}: label without image (volumes/{stem}.nii.gz missing)")
    return cases, global_names


def discover(
    root: str | os.PathLike, *, layout: str | None = None, require_labels: bool = True
) -> DatasetIndex:
    """Find the cases of a dataset folder.

    Parameters
    ----------
    root : the dataset folder
    layout : force a layout (one of :data:`LAYOUTS`); auto-detected when None
    require_labels : drop (and report) images without labels; keep them when False

    Raises
    ------
    InputError
        Missing or unreadable folder, unknown layout, or no usable case at all.
    """
    root = Path(root)
    if layout is None:
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    elif not root.is_dir():
        raise InputError(root, "dataset folder not found")
    problems: list[str] = []
    if layout == "totalseg":
        cases = _discover_totalseg(root, problems)
        names = _dataset_json_names(root, problems)
    elif layout == "nnunet":
        if not (root / "imagesTr").is_dir():
            raise InputError(root, "not an nnU-Net folder (imagesTr/ missing)")
        cases = _discover_nnunet(root, problems)
        names = _dataset_json_names(root, problems)
    else:
        if not (root / "volumes").is_dir():
            raise InputError(root, "not a flat dataset folder (volumes/ missing)")
        cases, names = _discover_flat(root, problems)
    if names:
        cases = [c if c.label_names else Case(c.case_id, c.image, c.label, names) for c in cases]
    if require_labels:
        cases = [c for c in cases if c.label is not None]
    if not cases:
        raise InputError(root, f"no usable cases found in the {layout} layout")
    cases.sort(key=lambda c: c.case_id)
    channel = _declared_channel(root)
    modality = modality_from_channel_name(channel)
    if channel is not None and modality is None:
        problems.append(
            f"{root / 'dataset.json'}: channel 0 is {channel!r}, not a CT, MR or US name; "
            "its modality is not taken from it"
        )
    return DatasetIndex(root, layout, tuple(cases), tuple(problems), names, modality, channel)
