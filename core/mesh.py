"""Surface meshes of masks, in world millimetres, and their export.

:func:`mask_to_mesh` runs marching cubes on a binary mask and maps the vertices through the
volume's full voxel-to-world affine (oblique, anisotropic and left-handed affines included), so
a mesh lines up with the image in any viewer that uses world coordinates. Faces are wound so
that normals point out of the object in world space and :meth:`Mesh.volume` is positive.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.atomic import atomic_path
from core.errors import InputError
from core.geometry import mask_bbox
from core.io import voxel_to_world

__all__ = [
    "Mesh",
    "mask_to_mesh",
    "label_meshes",
    "save_mesh",
    "save_scene",
    "load_mesh",
    "MESH_FORMATS",
]

# suffix -> trimesh file type
MESH_FORMATS = {".glb": "glb", ".obj": "obj", ".ply": "ply", ".stl": "stl"}

#: The coordinate system note in .ply, .obj and .stl headers (at most 80 bytes: an STL header).
#: 3D Slicer (4.11 and later) looks for "SPACE=RAS" or "SPACE=LPS" there and takes a mesh
#: file without either as LPS, which would mirror our RAS meshes against the volume.
SPACE_NOTE = "SPACE=RAS: NIfTI world mm, +x right, +y anterior, +z superior"


@dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle mesh in world coordinates.

    Attributes
    ----------
    vertices : (V, 3) float32 array, mm
    faces : (F, 3) int32 array, indices into ``vertices``, counter-clockwise seen from outside
    """

    vertices: np.ndarray
    faces: np.ndarray

    def __post_init__(self):
        v = np.ascontiguousarray(self.vertices, dtype=np.float32)
        f = np.ascontiguousarray(self.faces, dtype=np.int32)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"vertices must have shape (V, 3), got {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3:
            raise ValueError(f"faces must have shape (F, 3), got {f.shape}")
        if f.size and (f.min() < 0 or f.max() >= len(v)):
            raise ValueError(f"face indices must lie in [0, {len(v)}), got {f.min()}..{f.max()}")
        if not np.all(np.isfinite(v)):
            raise ValueError("vertices contain NaN or Inf")
        object.__setattr__(self, "vertices", v)
        object.__setattr__(self, "faces", f)

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])

    def _triangles(self) -> np.ndarray:
        """(F, 3, 3) float64 corners, centred on the mean vertex.

        Centring keeps float64 sums accurate for meshes far from the world origin; area and the
        signed volume of a closed mesh do not depend on the origin.
        """
        v = self.vertices.astype(np.float64)
        return (v - v.mean(axis=0))[self.faces]

    def area(self) -> float:
        """Surface area in mm^2."""
        if self.n_faces == 0:
            return 0.0
        t = self._triangles()
        return float(
            0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1).sum()
        )

    def volume(self) -> float:
        """Signed enclosed volume in mm^3 (divergence theorem): positive when normals point out.

        Only meaningful for a closed mesh, as :func:`mask_to_mesh` makes.
        """
        if self.n_faces == 0:
            return 0.0
        t = self._triangles()
        return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)

    def bounds(self) -> np.ndarray:
        """(2, 3) float array, mm: the minimum and the maximum corner of the bounding box."""
        if self.n_vertices == 0:
            raise ValueError("an empty mesh has no bounds")
        return np.stack([self.vertices.min(axis=0), self.vertices.max(axis=0)])


# --------------------------------------------------------------------------------------------
# Mask -> mesh


def mask_to_mesh(
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    level: float = 0.5,
    smooth_iterations: int = 0,
    step_size: int = 1,
    origin=(0, 0, 0),
) -> Mesh:
    """Closed surface of a mask in world mm by marching cubes.

    Parameters
    ----------
    mask : (I, J, K) bool or numeric array; the object is where ``mask > level``
    affine : (4, 4) float array, voxel index -> world mm (any non-singular affine)
    level : float, iso-value (0.5 for a binary mask; another value for a probability map)
    smooth_iterations : int, Taubin smoothing passes (0 = none). Marching cubes on a binary
        mask gives a staircase surface whose area is ~8% too large; ~10 passes bring the area
        within ~1% while changing the volume by well under 1% (Taubin does not shrink like plain
        Laplacian smoothing).
    step_size : int, marching-cubes step in voxels (>1 gives a coarser, faster mesh, still
        closed; its surface lies up to half a step from the step-1 one)
    origin : (3,) ints, the voxel index of ``mask[0, 0, 0]`` on the grid of ``affine`` when
        ``mask`` is a block cut out of a bigger binary mask that is empty around the block
        (e.g. an organ's bounding box in a CT-sized label map): the mesh is then exactly
        the whole mask's, without passes over the whole of it

    Returns
    -------
    Mesh with vertices in world mm and outward normals.

    Raises
    ------
    ValueError
        Non-3D mask, bad affine or options, or no voxel above ``level``.
    """
    from skimage.measure import marching_cubes  # lazy: keep `import core.mesh` light

    data = np.asarray(mask)
    if data.ndim != 3:
        raise ValueError(f"mask must be a 3D array, got shape {data.shape}")
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError("affine must be a finite, non-singular (4, 4) matrix")
    if int(step_size) != step_size or step_size < 1:
        raise ValueError(f"step_size must be a positive integer, got {step_size}")
    if int(smooth_iterations) != smooth_iterations or smooth_iterations < 0:
        raise ValueError(
            f"smooth_iterations must be a non-negative integer, got {smooth_iterations}"
        )
    o = np.asarray(origin, dtype=np.float64)
    if o.shape != (3,) or not np.all(o == np.round(o)):
        raise ValueError(f"origin must be 3 integer voxel indices, got {origin}")
    inside = data > level
    if not inside.any():
        raise ValueError(f"mask is empty (no voxel above level {level}): nothing to mesh")

    # Crop to the object's bounding box plus one voxel (an organ is small next to a CT volume);
    # where that margin falls outside the array, pad with background so that objects touching
    # the border still get a closed surface. Interior margins keep the real neighbour values,
    # so vertex positions are the same as on the whole array (with step 1).
    first, last = mask_bbox(inside)  # non-empty: checked above
    lo, hi = [int(x) for x in first], [int(x) + 1 for x in last]
    start = [max(x - 1, 0) for x in lo]
    stop = [min(x + 1, n) for x, n in zip(hi, data.shape, strict=True)]
    crop = data[tuple(slice(a0, a1) for a0, a1 in zip(start, stop, strict=True))]
    pad = [(int(x == 0), int(h == n)) for x, h, n in zip(lo, hi, data.shape, strict=True)]
    background = 0.0 if level > 0 else float(level) - 1.0  # any value below level
    padded = np.pad(crop.astype(np.float32), pad, mode="constant", constant_values=background)
    # Marching cubes samples every step-th index from 0; with a step > 1 the last index of an
    # axis must be one of them, or the margin there is skipped and the surface left open.
    if step_size > 1:
        end = [(0, -(n - 1) % step_size) for n in padded.shape]
        padded = np.pad(padded, end, mode="constant", constant_values=background)
    padded = _away_from_level(padded, float(level))
    verts, faces, _, _ = marching_cubes(padded, level=float(level), step_size=int(step_size))
    offset = np.asarray(start, dtype=np.float64) - [before for before, _ in pad] + o
    ijk = verts.astype(np.float64) + offset  # back to indices of the whole array
    xyz = voxel_to_world(a, ijk)

    mesh = Mesh(xyz, faces)
    # Orient by the sign of the enclosed volume in world space: it is negative exactly when
    # the winding is inward, whichever convention marching cubes used and whatever the
    # affine's handedness (a negative determinant mirrors the mesh and flips its winding).
    if mesh.volume() < 0:
        mesh = Mesh(mesh.vertices, mesh.faces[:, ::-1])
    if smooth_iterations:
        mesh = _taubin(mesh, int(smooth_iterations))
    return mesh


def _away_from_level(field: np.ndarray, level: float) -> np.ndarray:
    """``field`` with every value at least ``delta`` (1e-3 of its range) away from ``level``.

    Marching cubes puts one vertex on each grid edge the surface crosses. Where a grid value
    equals the level (a probability of exactly 0.5 does come out of the model) or lies within
    a few float32 steps of it, the vertices of all the edges around that grid point land on
    it: the mesh is closed as an index list, but a tool that welds vertices by position
    (trimesh's default load, every STL reader) then finds edges with three or four faces, so
    the mesh is no longer watertight. With the values kept ``delta`` away, every vertex lies
    at least 1e-3 of a voxel from the grid points. Values at the level go below it (the object
    is where ``field > level``); a vertex moves by at most ``2 delta / |v - level|`` voxels,
    ``v`` the value at the other end of its edge.
    """
    delta = np.float32(1e-3) * (field.max() - field.min())
    near = np.abs(field - np.float32(level)) < delta
    if not near.any():
        return field
    side = np.where(field > level, np.float32(level) + delta, np.float32(level) - delta)
    return np.where(near, side, field).astype(np.float32, copy=False)


def _taubin(mesh: Mesh, iterations: int) -> Mesh:
    import trimesh
    from trimesh.smoothing import filter_taubin

    tm = trimesh.Trimesh(mesh.vertices.astype(np.float64), mesh.faces, process=False)
    # trimesh alternates shrink and inflate steps, one per "iteration": ask for pairs. nu > lamb
    # with 1/lamb - 1/nu ~ 0.11 is Taubin's (1995) non-shrinking choice (lambda=0.5, mu=-0.53).
    filter_taubin(tm, lamb=0.5, nu=0.53, iterations=2 * iterations)
    return Mesh(np.asarray(tm.vertices), mesh.faces)


# --------------------------------------------------------------------------------------------
# Files


def _format_of(path: Path) -> str | None:
    return MESH_FORMATS.get(path.suffix.lower())


def _supported() -> str:
    return ", ".join(MESH_FORMATS)


def save_mesh(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Write a mesh atomically; the format comes from the suffix (.glb, .obj, .ply, .stl).

    Every format holds the same numbers: the vertices as they are, world mm of the volume's
    NIfTI affine (RAS+: +x right, +y anterior, +z superior), with no axis swap or scaling. A
    .ply, .obj or .stl says so in its header (:data:`SPACE_NOTE`), for 3D Slicer, which takes
    a mesh file that does not as LPS (mirrored against the volume). glTF viewers assume metres
    and +Y up: they show a .glb 1000x large with anterior up.

    Raises
    ------
    ValueError
        Unknown suffix (the message names the path and the supported formats), or a mesh with
        no triangles (:func:`load_mesh` refuses such a file).
    """
    import trimesh

    p = Path(path)
    fmt = _format_of(p)
    if fmt is None:
        raise ValueError(f"{p}: unsupported mesh format {p.suffix!r} (supported: {_supported()})")
    if mesh.n_faces == 0:
        raise ValueError(f"{p}: the mesh is empty (no triangles): nothing to save")
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    data = _with_space_note(tm, fmt)
    with atomic_path(p, suffix=p.suffix) as tmp:
        tmp.write_bytes(data)
    return p


def _with_space_note(tm, fmt: str) -> bytes:
    """The file's bytes with :data:`SPACE_NOTE` where 3D Slicer looks for it: a ``comment``
    line of a .ply header, a ``#`` line heading an .obj, the 80-byte header of a binary .stl."""
    if fmt == "obj":
        return tm.export(file_type="obj", header=SPACE_NOTE).encode("utf-8")
    data = tm.export(file_type=fmt)
    if fmt == "ply":  # after the "ply" and "format ..." lines, as the PLY spec wants
        magic, fmt_line, rest = data.split(b"\n", 2)
        return b"\n".join([magic, fmt_line, b"comment " + SPACE_NOTE.encode("ascii"), rest])
    if fmt == "stl":
        return SPACE_NOTE.encode("ascii").ljust(80, b"\0") + data[80:]
    return data


def label_meshes(labels: np.ndarray, affine: np.ndarray, *, smooth_iterations: int = 5):
    """One closed surface per class of a label map, in world mm.

    Parameters
    ----------
    labels : (I, J, K) integer array; 0 is background
    affine : (4, 4) voxel index -> world mm
    smooth_iterations : Taubin passes for each surface (see :func:`mask_to_mesh`)

    Returns
    -------
    [(class id, Mesh)] in increasing class order ([] when nothing is labelled)
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected a 3D label map, got shape {labels.shape}")
    from core.labelmap import class_boxes

    boxes = class_boxes(labels)
    if boxes is not None:
        # each class meshed from its bounding box (one find_objects pass): the same vertices as
        # from the whole map, without np.unique and ``labels == c`` over a CT-sized map
        return [
            (
                c,
                mask_to_mesh(
                    labels[box] == c,
                    affine,
                    smooth_iterations=smooth_iterations,
                    origin=[b.start for b in box],
                ),
            )
            for c, box in boxes.items()
        ]
    classes = (int(c) for c in np.unique(labels) if c != 0)
    return [
        (c, mask_to_mesh(labels == c, affine, smooth_iterations=smooth_iterations)) for c in classes
    ]


def save_scene(parts, path: str | os.PathLike) -> Path:
    """Write several meshes as one glTF binary scene (``.glb``), atomically: one named node
    per mesh, each with its own colour, in world mm as :func:`save_mesh`.

    Parameters
    ----------
    parts : iterable of ``(name, Mesh, (r, g, b) 0-255 or None)``
    path : the ``.glb`` file

    Raises
    ------
    ValueError
        Another suffix than ``.glb``, no mesh, or a mesh with no triangles.
    """
    import trimesh
    from trimesh.visual import TextureVisuals
    from trimesh.visual.material import PBRMaterial

    p = Path(path)
    if p.suffix.lower() != ".glb":
        raise ValueError(f"{p}: a scene of several meshes is written as .glb")
    scene = trimesh.Scene()
    for name, mesh, colour in parts:
        if mesh.n_faces == 0:
            raise ValueError(f"{p}: the mesh {name!r} is empty (no triangles): nothing to save")
        tm = trimesh.Trimesh(
            np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces), process=False
        )
        if colour is not None:
            rgba = [*(int(v) for v in colour), 255]
            tm.visual = TextureVisuals(
                material=PBRMaterial(baseColorFactor=rgba, metallicFactor=0.0, roughnessFactor=0.7)
            )
        _ = tm.vertex_normals  # cached normals are exported: smooth shading in viewers
        scene.add_geometry(tm, node_name=str(name), geom_name=str(name))
    if not scene.geometry:
        raise ValueError(f"{p}: no mesh to write")
    with atomic_path(p, suffix=p.suffix) as tmp:
        tmp.write_bytes(scene.export(file_type="glb"))
    return p


def load_mesh(path: str | os.PathLike) -> Mesh:
    """Read a mesh file (.glb, .obj, .ply, .stl); all geometry of a glTF scene is concatenated.

    Raises
    ------
    InputError
        Missing or unreadable file, unsupported suffix, or a file with no triangles.
    """
    import trimesh

    p = Path(path)
    if not p.exists():
        raise InputError(p, "file not found")
    if not p.is_file():
        raise InputError(p, "is not a file")
    fmt = _format_of(p)
    if fmt is None:
        raise InputError(p, f"unsupported mesh format {p.suffix!r} (supported: {_supported()})")
    try:
        # process=False keeps vertex order and count as written; load_mesh applies the scene
        # transforms of a glTF file and concatenates its meshes (trimesh.load(force="mesh")).
        tm = trimesh.load_mesh(str(p), file_type=fmt, process=False)
    except Exception as exc:  # loaders raise anything from KeyError to struct.error
        raise InputError(p, f"cannot read as {fmt} ({type(exc).__name__}: {exc})") from exc
    if fmt == "stl":
        tm.merge_vertices()  # STL stores each triangle's corners separately
    if len(tm.faces) == 0:
        raise InputError(p, "contains no triangles")
    return Mesh(np.asarray(tm.vertices), np.asarray(tm.faces))
