"""Synthetic CT volumes: cardiac phantoms (the built-in sample data) and organ-like shapes.

Everything is rendered from smooth implicit shapes in world millimetres on RAS+ grids
(array axis ``i`` = right, ``j`` = anterior, ``k`` = superior), so a phantom looks the same at
any voxel size. Labels are hard (nearest); only the intensity image gets partial volume and noise.
All randomness comes from ``np.random.default_rng(seed)``: a seed always gives the same case.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from core.atomic import make_output_dir, write_json
from core.io import LabelVolume, Volume, save_image, save_label

__all__ = [
    "HEART_LABELS",
    "make_heart_phantom",
    "write_heart_dataset",
    "make_organ_sample",
    "write_organ_dataset",
]

HEART_LABELS = {1: "LA", 2: "LV", 3: "RA", 4: "RV", 5: "myocardium"}
LA, LV, RA, RV, MYO = 1, 2, 3, 4, 5

# The heart is designed in mm for a 64 x 3 mm field of view; smaller fields shrink the anatomy.
_REF_FOV_MM = 192.0


def _canonical_heart_axes() -> np.ndarray:
    """(3, 3) columns: long axis (base -> apex: left, anterior, inferior), towards the RV, third."""
    e1 = np.array([-0.6, 0.55, -0.58])
    e1 /= np.linalg.norm(e1)
    v = np.array([0.6, 1.0, 0.0])  # the RV lies right-anterior of the LV
    v -= (v @ e1) * e1
    e2 = v / np.linalg.norm(v)
    return np.stack([e1, e2, np.cross(e1, e2)], axis=1)


# --------------------------------------------------------------------------------------------
# Small helpers


def _check_grid(shape, spacing) -> tuple[tuple[int, int, int], np.ndarray]:
    shape = tuple(int(s) for s in shape)
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be 3 sizes of at least 16 voxels, got {shape}")
    if not np.all(np.isfinite(sp) & (sp > 0)):
        raise ValueError(f"spacing must be positive, got {spacing}")
    return shape, sp


def _affine(shape, sp) -> np.ndarray:
    """RAS+ diagonal affine with the volume centre at world (0, 0, 0)."""
    a = np.diag([*sp, 1.0])
    a[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * sp
    return a


def _axes(shape, affine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World mm of voxel centres as open grids ``(I,1,1)``, ``(1,J,1)``, ``(1,1,K)``, float32."""
    out = []
    for ax, n in enumerate(shape):
        v = (affine[ax, ax] * np.arange(n) + affine[ax, 3]).astype(np.float32)
        out.append(v.reshape([n if a == ax else 1 for a in range(3)]))
    return tuple(out)


def _smooth_field(rng, shape, cells: int, n: int = 1) -> np.ndarray:
    """``(n, I, J, K)`` float32 smooth random fields with unit std, ``cells`` bumps per axis.

    Gaussian interpolation of a coarse random grid, done one axis at a time (a separable
    product of small matrices), which is far cheaper than a 3D spline zoom.
    """
    cells = max(2, int(cells))
    mats = []
    for s in shape:
        d = np.linspace(0, cells - 1, s)[:, None] - np.arange(cells)[None, :]
        w = np.exp(-0.5 * (d / 0.75) ** 2)
        mats.append((w / w.sum(1, keepdims=True)).astype(np.float32))
    low = rng.standard_normal((n, cells, cells, cells)).astype(np.float32)
    f = np.einsum("nabc,ia,jb,kc->nijk", low, *mats, optimize=True)
    f -= f.mean(axis=(1, 2, 3), keepdims=True)
    return f / (f.std(axis=(1, 2, 3), keepdims=True) + 1e-6)


def _random_rotation(rng) -> np.ndarray:
    """A uniformly distributed 3D rotation matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _to_frame(p, centre, rot, scale=1.0) -> list[np.ndarray]:
    """Coordinates of world points ``p`` (3 broadcastable arrays) in a rotated, scaled frame."""
    d = [p[a] - np.float32(centre[a]) for a in range(3)]
    return [sum(d[a] * np.float32(rot[a, b] / scale) for a in range(3)) for b in range(3)]


def _ell(q, c, semi) -> np.ndarray:
    """Normalised ellipsoid function: < 1 inside the ellipsoid of centre ``c``, semi-axes ``semi``."""
    return sum(((q[a] - np.float32(c[a])) / np.float32(semi[a])) ** 2 for a in range(3))


def _wobble(rng, q, amp: float, n: int = 3) -> np.ndarray:
    """Low-frequency bumps of a shape: a sum of random plane waves in its normalised frame."""
    out = np.float32(0.0)
    for _ in range(n):
        w = rng.normal(size=3)
        w *= rng.uniform(1.5, 4.0) / np.linalg.norm(w)
        phase = sum(q[a] * w[a] for a in range(3)) + rng.uniform(0, 2 * np.pi)
        out = out + rng.uniform(0, amp) * np.sin(phase)
    return out


def _on_border(mask: np.ndarray) -> bool:
    return any(mask.take(i, axis=a).any() for a in range(3) for i in (0, -1))


def _finish(rng, img, sigma_vox, noise_hu) -> np.ndarray:
    """Partial volume (Gaussian blur) then scanner noise; a float32 image in the CT range."""
    img = ndi.gaussian_filter(img, sigma_vox, mode="nearest", truncate=2.5)
    img += rng.normal(0.0, noise_hu, img.shape).astype(np.float32)
    return np.clip(img, -1024, 3071).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Heart phantom


def _heart_geometry(rng, k: float) -> dict:
    """Random per-case anatomy, in mm of the heart frame (t: long axis, u: towards the RV)."""
    u = rng.uniform
    tilt = Rotation.from_euler("xyz", u(-25, 25, 3), degrees=True).as_matrix()
    g = {"rot": tilt @ _canonical_heart_axes()}
    g["scale"] = k * u(0.9, 1.2)  # +-15 % around a heart a bit larger than the design
    # heart centre left-anterior of the body centre, shifted by a few voxels per case
    g["centre"] = np.array([-6.0, 6.0, 4.0]) * k + u(-7, 7, 3) * k
    g["lv"] = np.array([33, 17, 17]) * u(0.9, 1.1, 3)
    g["wall"] = u(8.5, 11.5) * k  # mm of myocardium: not scaled with the per-case size
    g["cut"] = u(0.62, 0.72) * g["lv"][0]  # the valve plane, where the atria begin
    g["rv_c"] = np.array([-5, 22, 0]) + u(-2, 2, 3)
    g["rv"] = np.array([31, 24, 28]) * u(0.9, 1.1, 3)
    # atria sit above the valve plane, the LA posterior, the RA to the right
    inplane = _canonical_heart_axes().T
    post, right = inplane @ [0, -1, 0.3], inplane @ [1, -0.2, 0.2]
    post, right = post[1:] / np.linalg.norm(post[1:]), right[1:] / np.linalg.norm(right[1:])
    g["la"] = np.array([17, 22, 20]) * u(0.9, 1.1, 3)
    g["la_c"] = np.array([-g["cut"] - 0.75 * g["la"][0], *(u(6, 10) * post)])
    g["ra"] = np.array([20, 19, 22]) * u(0.9, 1.1, 3)
    g["ra_c"] = np.array([-g["cut"] - 0.55 * g["ra"][0], *(u(20, 26) * right)])
    return g


def _heart_labels(p, g: dict, shrink: float) -> np.ndarray:
    """Label map (uint8) of the heart; ``p`` are the (displaced) world coordinates."""
    s = g["scale"] * shrink
    q = _to_frame(p, g["centre"], g["rot"], s)
    below = q[0] > -g["cut"]  # ventricular side of the valve plane
    lv = g["lv"]
    w = g["wall"] / s
    myo = (_ell(q, (1.0, 0, 0), lv + [w + 1, w, w]) < 1) & below
    cav = (_ell(q, (0, 0, 0), lv) < 1) & below
    # thin-walled chambers get their own bumps; the LV stays smooth so the wall stays even
    bump = g["bump"]
    rv = (_ell(q, g["rv_c"], g["rv"]) - bump < 1) & below & ~myo
    f_la, f_ra = _ell(q, g["la_c"], g["la"]) + bump, _ell(q, g["ra_c"], g["ra"]) - bump
    # where the atria overlap, the nearer centre wins: a smooth interatrial septum
    la = (f_la < 1) & ~below & (f_la <= f_ra)
    ra = (f_ra < 1) & ~below & (f_ra < f_la)
    lab = np.zeros(below.shape, np.uint8)
    for value, m in ((MYO, myo), (LV, cav), (RV, rv), (LA, la), (RA, ra)):
        lab[m] = value
    return lab


def _heart_image(rng, lab, xyz, g: dict, k: float, sp) -> np.ndarray:
    """CT intensities (HU, float32) around a heart label map: chest, lungs, spine, aorta."""
    u = rng.uniform
    x, y, z = xyz
    shape = lab.shape
    tex = _smooth_field(rng, shape, 8, n=2)
    fov = np.asarray(shape) * sp
    # body: an ellipse in the axial plane, with a subcutaneous fat rim and a muscle wall
    bx, by = 0.47 * fov[0] * u(0.95, 1.02), 0.40 * fov[1] * u(0.95, 1.05)
    bc = -0.07 * fov[1]
    r_body = np.sqrt((x / bx) ** 2 + ((y - bc) / by) ** 2) + 0.02 * tex[0]
    img = np.full(shape, -1000.0, np.float32)
    img[r_body < 1] = u(-110, -80)
    img[r_body < 1 - 7 / by] = u(35, 55)
    # lungs fill the thoracic cavity; the abdomen (liver) starts at a right-higher dome
    cav = r_body < 1 - 16 / by
    dome = -0.33 * fov[2] + 0.12 * fov[2] * np.exp(-(((x - 0.15 * fov[0]) / (0.25 * fov[0])) ** 2))
    abdomen = cav & (z < dome + 4 * tex[1])
    img[cav] = u(-870, -820) + 25 * tex[1][cav]
    # spine and posterior mediastinum (oesophagus, vessels) between the lungs
    sy = bc - by + 38 * k
    med = cav & (np.abs(x - 5 * k) < 20 * k) & (y < g["centre"][1] + 10 * k) & (y > sy)
    img[med] = u(20, 50)
    img[abdomen] = u(50, 70)
    r_vb = np.sqrt(x**2 + (y - sy) ** 2)
    disc = (z % (27 * k)) < 6 * k  # intervertebral discs are soft tissue
    vb = np.where(disc, u(70, 100), u(200, 300)).astype(np.float32)
    vb = np.where(r_vb > 13 * k, u(600, 750), vb)  # cortical rim
    img = np.where(r_vb < 16 * k, vb, img)
    img = np.where(np.sqrt(x**2 + (y - sy + 26 * k) ** 2) < 7 * k, 15.0, img)  # spinal canal
    blood = u(330, 430)
    # descending aorta left of the spine, ascending aorta up from the heart base
    img = np.where(np.sqrt((x + 22 * k) ** 2 + (y - sy - 8 * k) ** 2) < 11 * k, blood, img)
    heart = lab > 0
    # ~6 mm of epicardial fat, then one voxel of unlabelled wall around the thin-walled chambers
    fat_it = max(1, round(6.0 / float(sp.min())))
    fat = ndi.binary_dilation(heart, np.ones((3, 3, 3), bool), iterations=fat_it)
    img[fat] = u(-110, -80)
    base = g["centre"] + g["rot"] @ [-g["cut"] * g["scale"], 0, 0]
    r_asc = np.sqrt((x - base[0] - 4 * k) ** 2 + (y - base[1] - 8 * k) ** 2)
    asc = (r_asc < 13 * k) & (z > base[2]) & ~heart
    img[asc] = blood
    walls = ndi.binary_dilation(np.isin(lab, (LA, RA, RV))) & ~heart & ~asc
    myo_hu = u(80, 140)
    img[walls] = myo_hu
    left, right = blood + u(0, 30), blood - u(20, 80)  # right heart: less dense contrast
    for value, hu in ((LA, left), (LV, left + u(0, 20)), (RA, right), (RV, right), (MYO, myo_hu)):
        m = lab == value
        img[m] = hu + 6 * tex[0][m]
    return _finish(rng, img, u(0.6, 0.8), u(15, 25))


def make_heart_phantom(
    seed: int, *, shape: Sequence[int] = (64, 64, 64), spacing: float = 3.0
) -> tuple[Volume, LabelVolume]:
    """A contrast-enhanced cardiac CT phantom with TotalSegmentator-style heart labels.

    Parameters
    ----------
    seed : non-negative int; the same seed always gives the same case.
    shape : ``(I, J, K)`` voxels, each at least 16.
    spacing : voxel size in mm (a float or three floats).

    Returns
    -------
    image : Volume, ``(I, J, K)`` float32 HU, RAS+ affine centred on world (0, 0, 0).
    label : LabelVolume, ``(I, J, K)`` uint8 with :data:`HEART_LABELS` (0 = background).
    """
    shape, sp = _check_grid(shape, spacing)
    rng = np.random.default_rng(seed)
    affine = _affine(shape, sp)
    k = min(1.0, float((np.asarray(shape) * sp).min()) / _REF_FOV_MM)
    xyz = _axes(shape, affine)
    # one displacement field for all chambers, so that touching chambers bend together
    disp = _smooth_field(rng, shape, 5, n=3) * np.float32(5.0 * k)
    p = [xyz[a] + disp[a] for a in range(3)]
    g = _heart_geometry(rng, k)
    g["bump"] = _smooth_field(rng, shape, 7)[0] * np.float32(0.12)
    for shrink in (1.0, 0.9, 0.8, 0.7, 0.6):  # keep the whole heart inside the volume
        lab = _heart_labels(p, g, shrink)
        if not _on_border(lab):
            break
    g["scale"] *= shrink
    image = _heart_image(rng, lab, xyz, g, k, sp)
    return Volume(image, affine), LabelVolume(lab, affine)


def write_heart_dataset(
    out_dir: str | os.PathLike,
    n_cases: int,
    *,
    seed: int = 0,
    shape: Sequence[int] = (64, 64, 64),
    spacing: float = 3.0,
    progress: Callable[[int, int, str], None] | None = None,
    indices: Sequence[int] | None = None,
) -> list[str]:
    """Write ``n_cases`` heart phantoms as TotalSegmentator case folders.

    Layout: ``<out>/<case>/<case>-image.nii.gz`` and ``<case>-label.nii.gz`` for cases
    ``heart_000``, ``heart_001``, ... plus ``<out>/dataset.json`` with the label names. Case ``i``
    uses a seed drawn from ``(seed, i)``, so adding cases never changes the existing ones; cases
    whose two files already exist are skipped (not checked). ``indices`` writes only those case
    numbers (e.g. a training run's held-out cases), each the same as in the full set.
    ``progress(done, total, message)`` is called after each case.

    Returns
    -------
    The case ids, in order.
    """
    labels = {"0": "background", **{str(v): n for v, n in HEART_LABELS.items()}}
    meta = {"name": "synthetic-heart", "labels": labels, "layout": "totalseg", "modality": "CT"}
    meta |= {"seed": seed, "shape": list(shape), "spacing": spacing}
    return _write_cases(
        out_dir,
        n_cases,
        "heart",
        lambda i: [seed, i],
        lambda s: make_heart_phantom(s, shape=shape, spacing=spacing),
        meta,
        progress,
        indices,
    )


def _write_cases(
    out_dir, n_cases, prefix, seed_key, make, meta, progress, indices=None
) -> list[str]:
    """Write ``<prefix>_NNN`` case folders (skipping complete ones) and ``dataset.json``;
    only the case numbers ``indices`` (each below ``n_cases``) when given."""
    if n_cases < 0:
        raise ValueError(f"n_cases must be >= 0, got {n_cases}")
    todo = range(n_cases) if indices is None else sorted({int(i) for i in indices})
    bad = [i for i in todo if not 0 <= i < n_cases]
    if bad:
        raise ValueError(f"case numbers {bad} are outside 0..{n_cases - 1}")
    out = make_output_dir(out_dir)
    ids = []
    for n_done, i in enumerate(todo, start=1):
        case = f"{prefix}_{i:03d}"
        img_p, lab_p = out / case / f"{case}-image.nii.gz", out / case / f"{case}-label.nii.gz"
        if img_p.exists() and lab_p.exists():
            msg = f"{case}: exists, skipped"
        else:
            case_seed = int(np.random.SeedSequence(seed_key(i)).generate_state(1)[0])
            image, label = make(case_seed)
            save_image(image, img_p)
            save_label(label, lab_p)
            msg = f"{case}: written"
        ids.append(case)
        if progress is not None:
            progress(n_done, len(todo), msg)
    write_json(out / "dataset.json", {**meta, "cases": ids})
    return ids


# --------------------------------------------------------------------------------------------
# Organ-like shapes for shape-model pretraining

_ORGAN_KINDS = ("ellipsoid", "bean", "tube", "shell", "lobulated")


def _thinnest_mm(spacing) -> float:
    """The smallest half thickness (mm) a grid of this spacing can show."""
    return 0.6 * float(np.max(spacing))


def _dist2_to_polyline(q, pts) -> np.ndarray:
    """Squared distance (mm^2) from points ``q`` (3 broadcastable arrays) to the polyline
    through ``pts`` ``(N, 3)``."""
    pts = np.asarray(pts, dtype=np.float32)
    d2 = np.float32(np.inf)
    for a, b in zip(pts[:-1], pts[1:], strict=True):  # squared distance to each segment
        ab = b - a
        h = np.clip(sum((q[i] - a[i]) * ab[i] for i in range(3)) / (ab @ ab), 0, 1)
        d2 = np.minimum(d2, sum((q[i] - a[i] - h * ab[i]) ** 2 for i in range(3)))
    return d2


def _organ_mask(rng, kind: str, q, half: float, thin: float) -> np.ndarray:
    """Inside mask of one organ-like shape.

    ``q`` are local-frame coordinates in mm (3 broadcastable arrays), ``half`` the half extent
    along the long axis and ``thin`` the smallest half thickness the grid can show (mm).
    Every shape stays within ``1.6 * half`` of the origin.
    """
    u = rng.uniform
    if kind == "tube":  # vessel / oesophagus / cord: a bent tube along a cubic Bezier curve
        r = max(u(0.06, 0.22) * half, thin)
        bend = u(-0.6, 0.6, (4, 2)) * [[0, 0], [1, 1], [1, 1], [0.5, 0.5]]
        ctrl = np.c_[[-1, -1 / 3, 1 / 3, 1], bend] * half
        s = np.linspace(0, 1, 13)[:, None]
        pts = np.hstack([(1 - s) ** 3, 3 * (1 - s) ** 2 * s, 3 * (1 - s) * s**2, s**3]) @ ctrl
        d2 = _dist2_to_polyline(q, pts)
        rad = r * (1 + _wobble(rng, [qi / half for qi in q], 0.12))  # calibre changes
        return d2 < rad**2
    lo = (0.6, 0.5) if kind == "shell" else (0.45, 0.3)  # shells: rounder, for even thickness
    semi = np.maximum(half * np.array([1.0, u(lo[0], 1.0), u(lo[1], 0.9)]), thin)
    qn = [q[a] / np.float32(semi[a]) for a in range(3)]
    rho = np.sqrt(_ell(qn, (0, 0, 0), (1, 1, 1))) - _wobble(rng, qn, 0.1)
    if kind == "shell":  # a thin curved plate: a U-shaped band (mandible) or a cap of a shell
        plate = np.abs(rho - 1) * np.float32(semi[1]) < max(u(2.0, 6.0), thin)
        if u() < 0.5:
            return plate & (np.abs(qn[2]) < u(0.25, 0.5)) & (qn[0] > -u(0.0, 0.3))
        return plate & (qn[2] > u(0.2, 0.6))
    if kind == "bean":  # kidney: a bent ellipsoid with an indentation (hilum) on its concave side
        qn[1] = qn[1] + np.float32(u(0.2, 0.5)) * qn[0] ** 2
        rho = np.sqrt(_ell(qn, (0, 0, 0), (1, 1, 1))) - _wobble(rng, qn, 0.08)
        return (rho < 1) & ~(_ell(qn, (0, -1.0, 0), (0.35, 0.55, 0.6)) < 1)
    inside = rho < 1
    if kind == "lobulated":  # a union of a few overlapping lobes
        for _ in range(rng.integers(1, 4)):
            d = rng.normal(size=3)
            c = d / np.linalg.norm(d) * u(0.4, 0.7)
            inside |= _ell(qn, c, u(0.35, 0.6, 3)) - _wobble(rng, qn, 0.1) < 1
    return inside


def _crossing_tube(rng, shape, affine) -> np.ndarray:
    """``(I, J, K)`` bool: a thin tube of 2.5-9 mm radius that crosses the whole volume.

    Its centre line runs along the superior axis (70 %) or a random direction, tilted at
    random (typically about 12 degrees), through a point within the middle half of the field
    of view, and sways sideways (0-12 mm, wavelength 80-250 mm); its calibre changes by up to
    15 %. It leaves the volume on two sides, as a spinal cord or an oesophagus leaves a
    head-and-neck scan.
    """
    u = rng.uniform
    sp = np.diag(affine)[:3]
    fov = np.asarray(shape) * sp
    d = np.array([0.0, 0.0, 1.0]) if u() < 0.7 else rng.normal(size=3)
    d = d / np.linalg.norm(d) + rng.normal(0, 0.15, 3)
    d /= np.linalg.norm(d)
    e1 = np.cross(d, [1.0, 0.0, 0.0] if abs(d[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(d, e1)
    p0 = u(-fov / 4, fov / 4)
    half_len = float(np.linalg.norm(fov) / 2 + np.linalg.norm(p0)) + 10.0  # beyond every face
    t = np.arange(-half_len, half_len + 1e-6, max(4.0, 2 * float(sp.min())))
    amp, lam, phase = u(0, 12, 2), u(80, 250, 2), u(0, 2 * np.pi, 2)
    sway = [a * np.sin(2 * np.pi * t / w + f) for a, w, f in zip(amp, lam, phase, strict=True)]
    pts = p0 + t[:, None] * d + sway[0][:, None] * e1 + sway[1][:, None] * e2
    near = np.all(np.abs(pts) <= fov / 2 + 25.0, axis=1)  # the part that can reach the grid
    near = np.convolve(near, np.ones(3), mode="same") > 0  # and the segments leaving it
    xyz = _axes(shape, affine)
    d2 = _dist2_to_polyline(xyz, pts[near])
    r = max(u(2.5, 9.0), _thinnest_mm(sp))
    q = [xyz[i] / np.float32(half_len) for i in range(3)]
    rad = r * (1 + _wobble(rng, q, 0.15))
    return d2 < rad**2


def _organ_spacing(rng, spacing) -> np.ndarray:
    if spacing is not None:
        return np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if rng.uniform() < 0.5:
        return np.full(3, rng.uniform(1.0, 5.0))
    inplane = rng.uniform(1.0, 3.0)  # thick slices along the superior axis, as in clinical CT
    return np.array([inplane, inplane, rng.uniform(max(inplane, 1.5), 5.0)])


def make_organ_sample(
    seed: int,
    *,
    shape: Sequence[int] = (64, 64, 64),
    spacing: float | Sequence[float] | None = None,
    n_objects: int | None = None,
    crossing_tube: bool = False,
) -> tuple[Volume, LabelVolume]:
    """A CT-like volume with 1-4 non-overlapping organ-like objects, for shape pretraining.

    Objects are deformed ellipsoids, kidney-like beans, bent tubes, thin curved plates and
    lobulated blobs of 5-100 mm, randomly rotated and placed fully inside the volume. Each has
    its own mean HU and texture on a textured background; about one in four is low contrast
    (mean within 10-35 HU of the background), so only its shape gives it away.

    Parameters
    ----------
    seed : non-negative int; the same seed always gives the same sample.
    shape : ``(I, J, K)`` voxels, each at least 16.
    spacing : mm per voxel (float or 3 floats); random in 1-5 mm (sometimes anisotropic) if None.
    n_objects : 1-4; random if None. Fewer are returned only if they cannot be placed.
    crossing_tube : make object 1 a long thin tube that runs through the whole field of view
        and leaves it on two sides (a spinal cord, oesophagus or vessel in a scan; see
        :func:`_crossing_tube`); the other objects stay fully inside. The tube's random draws
        happen only when it is asked for, so samples without it do not depend on the option.

    Returns
    -------
    image : Volume, ``(I, J, K)`` float32 HU, RAS+ affine centred on world (0, 0, 0).
    label : LabelVolume, ``(I, J, K)`` uint8, objects labelled 1..n (0 = background).
    """
    rng = np.random.default_rng(seed)
    shape, sp = _check_grid(shape, _organ_spacing(rng, spacing))
    n = int(rng.integers(1, 5)) if n_objects is None else int(n_objects)
    if not 1 <= n <= 4:
        raise ValueError(f"n_objects must be 1..4, got {n_objects}")
    affine = _affine(shape, sp)
    if crossing_tube:
        tube = _crossing_tube(rng, shape, affine)
        lab = _place_organs(rng, shape, affine, n - 1, lab=tube.astype(np.uint8))
    else:
        lab = _place_organs(rng, shape, affine, n)
    u = rng.uniform
    # background: textured soft tissue with a second tissue class (fat or muscle) in patches
    tex = _smooth_field(rng, shape, 6, n=2)
    fine = _smooth_field(rng, shape, 14, n=2)
    img = u(-80, 80) + u(5, 30) * tex[0]
    img = np.where(tex[1] > u(0.3, 1.5), img + u(-150, 120), img) + u(2, 10) * fine[0]
    for value, box in enumerate(ndi.find_objects(lab), start=1):
        box = tuple(slice(max(b.start - 3, 0), b.stop + 3) for b in box)
        sub, m = img[box], lab[box] == value  # sub is a view: painting it paints img
        # contrast is relative to the tissue the object actually sits in
        local = float(sub[ndi.binary_dilation(m, iterations=2) & ~m].mean())
        delta = u(10, 35) if u() < 0.25 else u(60, 300)
        sign = 1 if u() < 0.6 else -1
        if not -150 <= local + sign * delta <= 400:  # stay in the fat..contrast range of organs
            sign = -sign
        angle = u(0, 2 * np.pi)
        body = np.clip(local + sign * delta, -150, 400) + u(3, 25) * (
            np.cos(angle) * fine[0][box] + np.sin(angle) * fine[1][box]
        )
        if u() < 0.2:  # an enhancing or darker rim, as around cysts or bowel
            body += u(-60, 60) * (m & ~ndi.binary_erosion(m))
        sub[m] = body[m]
    image = _finish(rng, img.astype(np.float32), u(0.5, 0.9), u(5, 30))
    return Volume(image, affine), LabelVolume(lab, affine)


def _place_organs(rng, shape, affine, n: int, lab: np.ndarray | None = None) -> np.ndarray:
    """``(I, J, K)`` uint8 map of up to ``n`` non-overlapping shapes fully inside the volume,
    added (as the next labels) to ``lab`` when given, without touching its objects."""
    u = rng.uniform
    sp = np.diag(affine)[:3]
    xyz = _axes(shape, affine)
    fov = np.asarray(shape) * sp
    thin = _thinnest_mm(sp)
    lo_ext, hi_ext = max(5.0, 3 * sp.max()), max(min(100.0, 0.6 * fov.min()), 3 * sp.max())
    lab = np.zeros(shape, np.uint8) if lab is None else lab
    value = int(lab.max()) + 1
    for _ in range(n):
        ext = lo_ext * (hi_ext / lo_ext) ** np.sqrt(u())  # log scale, leaning to large
        for attempt in range(24):
            if attempt and attempt % 6 == 0:
                ext *= 0.75  # too big to place among the others: try a smaller one
            rb = 0.8 * ext + sp  # bounding radius of the shape (see _organ_mask)
            margin = np.minimum(rb, fov / 2 - sp)
            centre = u(-fov / 2 + margin, fov / 2 - margin)
            lo = np.clip(np.floor((centre - rb - affine[:3, 3]) / sp), 0, shape).astype(int)
            hi = np.clip(np.ceil((centre + rb - affine[:3, 3]) / sp) + 1, 0, shape).astype(int)
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            sub = [
                xyz[a][tuple(box[a] if b == a else slice(None) for b in range(3))] for a in range(3)
            ]
            q = _to_frame(sub, centre, _random_rotation(rng))
            kind = _ORGAN_KINDS[rng.integers(len(_ORGAN_KINDS))]
            m = np.zeros(shape, bool)
            m[box] = _organ_mask(rng, kind, q, ext / 2, thin)
            if m.sum() >= 12 and not _on_border(m) and not lab[m].any():
                lab[m] = value
                value += 1
                break
    return lab


def write_organ_dataset(
    out_dir: str | os.PathLike,
    n_cases: int,
    *,
    seed: int = 0,
    shape: Sequence[int] = (64, 64, 64),
    crossing_tube: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[str]:
    """Write ``n_cases`` organ-shape samples (:func:`make_organ_sample`) as TotalSegmentator
    case folders ``organ_000``, ... (labels 1..n objects per case), for pretraining; with
    ``crossing_tube``, samples whose object 1 is a tube through the whole field of view, as
    ``tube_000``, ... (other case seeds than the organ cases').

    Same conventions as :func:`write_heart_dataset`: per-case seeds from ``(seed, i)``,
    existing cases skipped, ``dataset.json`` written.
    """
    labels = {"0": "background", **{str(k): f"object {k}" for k in range(1, 5)}}
    if crossing_tube:
        labels["1"] = "crossing tube"
    name = "synthetic-tubes" if crossing_tube else "synthetic-organs"
    meta = {"name": name, "labels": labels, "layout": "totalseg", "modality": "CT"}
    meta |= {"seed": seed, "shape": list(shape)}
    return _write_cases(
        out_dir,
        n_cases,
        "tube" if crossing_tube else "organ",
        lambda i: [seed, i, 8 if crossing_tube else 7],
        lambda s: make_organ_sample(s, shape=shape, crossing_tube=crossing_tube),
        meta,
        progress,
    )
