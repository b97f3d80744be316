"""Pictures for the page: slices with overlays, three orthogonal views, ground truth vs
prediction, and the coloured 3D scene. Plain numpy and Pillow, fast enough to redraw on every
click (the matplotlib pictures of :mod:`core.viz` take most of a second).

Display convention (the same as :mod:`core.viz`): a slice ``S = take_slice(volume, axis, idx)``
of shape ``(rows, cols)`` is drawn transposed and flipped up-down, so that rows run left to
right and columns run bottom to top (in a canonical RAS+ volume: right/anterior/superior point
right or up on screen). The picture is then resized with nearest neighbour to about
:data:`DISPLAY_SIZE` pixels, with non-square voxels stretched to their size in mm.
:class:`SliceView` owns that mapping in both directions, so a click on a picture pixel always
lands on the voxel drawn there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.geometry import other_axes, take_slice
from core.intensity import display_window as intensity_window  # the page's grey levels

__all__ = [
    "AXIS_NAMES",
    "DISPLAY_SIZE",
    "OBJECT_COLOURS",
    "SliceView",
    "intensity_window",
    "render_slice",
    "orthogonal_views",
    "comparison_panels",
    "save_scene_glb",
]

AXIS_NAMES = ("sagittal", "coronal", "axial")
DISPLAY_SIZE = 512
#: RGB of object 1, 2, ... (cycled); ground truth structures take their object's colour.
OBJECT_COLOURS = (
    (255, 140, 0),
    (30, 144, 255),
    (220, 20, 60),
    (186, 85, 211),
    (0, 206, 209),
    (255, 215, 0),
)
GT_OUTLINE = (50, 255, 50)
POSITIVE = (40, 220, 40)
NEGATIVE = (235, 40, 40)
BOX = (255, 230, 0)


def colour_of(index: int) -> tuple[int, int, int]:
    """Colour of object ``index`` (0-based)."""
    return OBJECT_COLOURS[index % len(OBJECT_COLOURS)]


def _nearest_index(n_src: int, n_dst: int) -> np.ndarray:
    """Source index of each of ``n_dst`` output pixels (nearest neighbour, pixel centres)."""
    return np.minimum(((np.arange(n_dst) + 0.5) * n_src / n_dst).astype(np.int64), n_src - 1)


@dataclass(frozen=True)
class SliceView:
    """How a ``(n_rows, n_cols)`` slice is drawn as a ``(height, width)`` picture.

    Picture column ``x`` shows slice row ``row_of_x[x]``; picture row ``y`` shows slice column
    ``n_cols - 1 - k`` with ``k`` the source index of ``y`` (the up-down flip).
    """

    n_rows: int
    n_cols: int
    width: int
    height: int

    @classmethod
    def for_slice(cls, shape2d, spacing2d=(1.0, 1.0), size: int = DISPLAY_SIZE) -> SliceView:
        """Fit a slice of ``shape2d`` voxels of ``spacing2d`` mm in ``size`` pixels."""
        n_rows, n_cols = (int(n) for n in shape2d)
        if n_rows < 1 or n_cols < 1:
            raise ValueError(f"empty slice shape {shape2d}")
        w_mm, h_mm = n_rows * float(spacing2d[0]), n_cols * float(spacing2d[1])
        scale = size / max(w_mm, h_mm)
        return cls(n_rows, n_cols, max(1, round(w_mm * scale)), max(1, round(h_mm * scale)))

    @classmethod
    def for_volume(cls, shape, spacing, axis: int, size: int = DISPLAY_SIZE) -> SliceView:
        r_ax, c_ax = other_axes(axis)
        return cls.for_slice((shape[r_ax], shape[c_ax]), (spacing[r_ax], spacing[c_ax]), size)

    @property
    def rows_of_x(self) -> np.ndarray:
        return _nearest_index(self.n_rows, self.width)

    @property
    def cols_of_y(self) -> np.ndarray:
        return self.n_cols - 1 - _nearest_index(self.n_cols, self.height)

    def render(self, slice2d: np.ndarray) -> np.ndarray:
        """``(height, width, ...)`` picture of a ``(n_rows, n_cols, ...)`` slice."""
        s = np.asarray(slice2d)
        if s.shape[:2] != (self.n_rows, self.n_cols):
            raise ValueError(f"slice shape {s.shape[:2]} != {(self.n_rows, self.n_cols)}")
        return s[self.rows_of_x[None, :], self.cols_of_y[:, None]]

    def pixel_to_rc(self, x, y) -> tuple[int, int]:
        """The slice pixel ``(row, col)`` drawn at picture pixel ``(x, y)``.

        Raises
        ------
        ValueError
            ``(x, y)`` is not a pixel of the picture.
        """
        xi, yi = int(np.floor(float(x))), int(np.floor(float(y)))
        if not (0 <= xi < self.width and 0 <= yi < self.height):
            raise ValueError(
                f"the click at pixel ({x:g}, {y:g}) is outside the {self.width}x{self.height} "
                "slice picture"
            )
        return int(self.rows_of_x[xi]), int(self.cols_of_y[yi])

    def rc_to_pixel(self, row, col) -> tuple[float, float]:
        """Picture coordinates ``(x, y)`` of the centre of slice pixel ``(row, col)``."""
        x = (float(row) + 0.5) * self.width / self.n_rows - 0.5
        k = self.n_cols - 1 - float(col)
        y = (k + 0.5) * self.height / self.n_cols - 0.5
        return x, y


def _grey(slice2d, window) -> np.ndarray:
    lo, hi = window
    g = np.clip((np.asarray(slice2d, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return np.repeat((g * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)


def _blend(rgb: np.ndarray, mask: np.ndarray, colour, alpha: float = 0.45) -> None:
    if mask.any():
        c = np.asarray(colour, dtype=np.float32)
        rgb[mask] = ((1 - alpha) * rgb[mask] + alpha * c + 0.5).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2D mask (4-neighbourhood)."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return m
    p = np.pad(m, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def _draw_marker(rgb, x, y, colour, radius: int = 5) -> None:
    h, w = rgb.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    d2 = (xx - x) ** 2 + (yy - y) ** 2
    rgb[d2 <= (radius + 1.5) ** 2] = (255, 255, 255)
    rgb[d2 <= radius**2] = colour


def _draw_rect(rgb, x0, y0, x1, y1, colour) -> None:
    h, w = rgb.shape[:2]
    x0, x1 = (int(np.clip(round(v), 0, w - 1)) for v in sorted((x0, x1)))
    y0, y1 = (int(np.clip(round(v), 0, h - 1)) for v in sorted((y0, y1)))
    for t in (0, 1):
        rgb[y0 : y1 + 1, min(x0 + t, w - 1)] = colour
        rgb[y0 : y1 + 1, max(x1 - t, 0)] = colour
        rgb[min(y0 + t, h - 1), x0 : x1 + 1] = colour
        rgb[max(y1 - t, 0), x0 : x1 + 1] = colour


def render_slice(
    view: SliceView,
    image2d: np.ndarray,
    window: tuple[float, float],
    *,
    masks=(),
    gt2d: np.ndarray | None = None,
    points=(),
    boxes=(),
    corner=None,
) -> np.ndarray:
    """A slice with overlays, as a ``(height, width, 3)`` uint8 picture.

    Parameters
    ----------
    view : how the slice is drawn
    image2d : (n_rows, n_cols) intensities
    window : (low, high) display window
    masks : iterable of ``((n_rows, n_cols) bool, (r, g, b))``, filled semi-transparently
    gt2d : (n_rows, n_cols) int labels, drawn as outlines (every non-zero label)
    points : iterable of ``(row, col, positive)`` click markers
    boxes : iterable of ``(r0, c0, r1, c1)`` half-open boxes
    corner : ``(row, col)`` of a box's first corner, or None
    """
    rgb = _grey(view.render(image2d), window)
    for mask, colour in masks:
        _blend(rgb, view.render(np.asarray(mask, dtype=bool)), colour)
    if gt2d is not None:
        g = view.render(np.asarray(gt2d))
        edge = np.zeros(g.shape, dtype=bool)
        for v in np.unique(g):
            if v:
                edge |= _outline(g == v)
        rgb[edge] = GT_OUTLINE
    for r0, c0, r1, c1 in boxes:
        # the box covers pixels r0..r1-1: its edges are half a pixel outside their centres
        xa, ya = view.rc_to_pixel(r0 - 0.5, c0 - 0.5)
        xb, yb = view.rc_to_pixel(r1 - 0.5, c1 - 0.5)
        _draw_rect(rgb, xa, ya, xb, yb, BOX)
    radius = max(3, min(view.width, view.height) // 80)
    if corner is not None:
        _draw_marker(rgb, *view.rc_to_pixel(*corner), BOX, radius)
    for row, col, positive in points:
        _draw_marker(rgb, *view.rc_to_pixel(row, col), POSITIVE if positive else NEGATIVE, radius)
    return rgb


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a single bitmap size
        return ImageFont.load_default()


def _titled(panels: list[np.ndarray], titles: list[str], *, gap: int = 6) -> np.ndarray:
    """Panels side by side on a dark background with a title above each."""
    from PIL import Image, ImageDraw

    title_h = 20
    h = max(p.shape[0] for p in panels) + title_h
    w = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = np.full((h, w, 3), 24, dtype=np.uint8)
    x = 0
    for p in panels:
        canvas[title_h : title_h + p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    font = _font(13)
    x = 0
    for p, t in zip(panels, titles, strict=True):
        draw.text((x + 4, 3), t, fill=(230, 230, 230), font=font)
        x += p.shape[1] + gap
    return np.asarray(img)


def _stack(rows: list[np.ndarray], gap: int = 6) -> np.ndarray:
    w = max(r.shape[1] for r in rows)
    out = []
    for i, r in enumerate(rows):
        if r.shape[1] < w:
            r = np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0)), constant_values=24)
        out.append(r)
        if i < len(rows) - 1:
            out.append(np.full((gap, w, 3), 24, dtype=np.uint8))
    return np.concatenate(out, axis=0)


def orthogonal_views(
    image: np.ndarray,
    spacing,
    window,
    point,
    *,
    masks=(),
    gt: np.ndarray | None = None,
    size: int = 256,
) -> np.ndarray:
    """Sagittal, coronal and axial slices through voxel ``point`` with the masks overlaid.

    Parameters
    ----------
    image : (I, J, K) intensities
    spacing : (3,) mm
    point : (3,) voxel the slices pass through
    masks : iterable of ``((I, J, K) bool, (r, g, b))``
    gt : (I, J, K) int labels drawn as outlines, or None
    """
    p = [int(np.clip(round(float(v)), 0, n - 1)) for v, n in zip(point, image.shape, strict=True)]
    panels, titles = [], []
    for axis in range(3):
        view = SliceView.for_volume(image.shape, spacing, axis, size)
        panels.append(
            render_slice(
                view,
                take_slice(image, axis, p[axis]),
                window,
                masks=[(take_slice(m, axis, p[axis]), c) for m, c in masks],
                gt2d=None if gt is None else take_slice(gt, axis, p[axis]),
            )
        )
        titles.append(f"{AXIS_NAMES[axis]} {p[axis]}")
    return _titled(panels, titles)


def comparison_panels(
    image: np.ndarray,
    spacing,
    window,
    gt: np.ndarray,
    pred: np.ndarray,
    colour,
    *,
    size: int = 200,
    gt_value: int | None = None,
    centre=None,
) -> np.ndarray:
    """Ground truth vs prediction on three axes through the ground truth's centre.

    Rows: sagittal, coronal, axial. Columns: ground truth, prediction, errors (green: both,
    red: predicted only, blue: missed). With ``gt_value``, ``gt`` is a label map and the
    ground truth its voxels of that value; ``centre`` (a voxel index, the mean of the ground
    truth's voxels) spares finding it. Either way only the three slices are read.
    """
    if centre is None:
        g, q = np.asarray(gt if gt_value is None else gt == gt_value, bool), np.asarray(pred, bool)
        ref = g if g.any() else q
        centre = np.argwhere(ref).mean(0) if ref.any() else np.array(image.shape) / 2
    p = [int(np.clip(round(v), 0, n - 1)) for v, n in zip(centre, image.shape, strict=True)]

    def cut(a, axis, is_gt):
        s = np.asarray(take_slice(a, axis, p[axis]))
        return s == gt_value if is_gt and gt_value is not None else s.astype(bool, copy=False)

    rows = []
    for axis in range(3):
        view = SliceView.for_volume(image.shape, spacing, axis, size)
        img = take_slice(image, axis, p[axis])
        gs, qs = cut(gt, axis, True), cut(pred, axis, False)
        both = render_slice(view, img, window)
        for mask, col in (((gs & qs), (40, 200, 40)), ((~gs & qs), (230, 40, 40))):
            _blend(both, view.render(mask), col, alpha=0.6)
        _blend(both, view.render(gs & ~qs), (40, 90, 255), alpha=0.6)
        panels = [
            render_slice(view, img, window, masks=[(gs, colour)]),
            render_slice(view, img, window, masks=[(qs, colour)]),
            both,
        ]
        name = AXIS_NAMES[axis]
        rows.append(
            _titled(
                panels,
                [f"ground truth, {name} {p[axis]}", "prediction", "green both, red FP, blue FN"],
            )
        )
    return _stack(rows)


def save_scene_glb(meshes, path: str | os.PathLike) -> Path | None:
    """Write meshes as one glTF binary scene, each with its own colour, for ``gr.Model3D``.

    Parameters
    ----------
    meshes : iterable of ``(core.mesh.Mesh, (r, g, b))`` in world mm
    path : the .glb file

    Returns
    -------
    The path, or None when there is no mesh to show.
    """
    from core.mesh import save_scene

    parts = [(f"object_{i + 1}", m, c) for i, (m, c) in enumerate(meshes) if m is not None]
    if not parts:
        return None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_scene(parts, path)
