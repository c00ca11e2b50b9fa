"""The canvas of the slice pages: fonts, panel layout, orientation and outline bands.

Pages are composed as numpy arrays and lettered with Pillow in DejaVu Sans, the font
matplotlib ships (so the pages look like the summary page). Font sizes are given in
points at the page's nominal 100 dpi, as on the summary page. Panels are in radiological
convention (patient right on the image left, anterior up), slices from inferior to
superior. Volumes are ``(z, y, x)``. The page types are in :mod:`strokeflow.report.panels`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from strokeflow.analysis.volume import Geometry
from strokeflow.report.render import MUTED, PAGE_HEIGHT_PX, PAGE_WIDTH_PX, TEXT

_DPI = 100
#: Outline band width on the page (pixels): visible on a scaled-down PACS viewport.
OUTLINE_WIDTH_PX = 3
PAGE_FOOTER = "Radiological orientation: patient right on image left. NOT FOR PRIMARY DIAGNOSIS"


def rgb(colour: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """A colour as an RGB tuple, from ``#rrggbb`` or as given."""
    if isinstance(colour, tuple):
        return colour
    value = colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


class Fonts:
    """DejaVu Sans faces by (size in points, bold), loaded once per page set."""

    def __init__(self) -> None:
        self._dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        self._faces: dict[tuple[int, bool], ImageFont.FreeTypeFont] = {}

    def get(self, size_pt: float, bold: bool = False) -> ImageFont.FreeTypeFont:
        """The face of ``size_pt`` points (at the page's 100 dpi)."""
        size_px = round(size_pt * _DPI / 72.0)
        key = (size_px, bold)
        if key not in self._faces:
            name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
            self._faces[key] = ImageFont.truetype(str(self._dir / name), size_px)
        return self._faces[key]


def display_orientation(geometry: Geometry) -> tuple[bool, bool]:
    """Flips ``(flip_rows, flip_columns)`` that show a slice in radiological convention.

    Radiological convention puts the patient's right on the viewer's left (so the
    x index must increase towards the patient's left) and anterior at the top (the y
    index must increase towards posterior).
    """
    return geometry.patient_posterior_sign_y() < 0, geometry.patient_left_sign_x() < 0


def crop_box(valid_zyx: np.ndarray, margin_px: int = 4) -> tuple[slice, slice]:
    """``(rows, columns)`` slices of the smallest box holding every valid voxel.

    Panels are cropped to the head so that the brain fills them; an empty mask keeps
    the whole plane.
    """
    plane: np.ndarray = np.any(valid_zyx, axis=0)
    if not plane.any():
        return slice(None), slice(None)
    rows = np.nonzero(np.any(plane, axis=1))[0]
    cols = np.nonzero(np.any(plane, axis=0))[0]
    ny, nx = plane.shape
    return (
        slice(max(0, rows[0] - margin_px), min(ny, rows[-1] + margin_px + 1)),
        slice(max(0, cols[0] - margin_px), min(nx, cols[-1] + margin_px + 1)),
    )


def oriented(slice_yx: np.ndarray, flips: tuple[bool, bool]) -> np.ndarray:
    """A ``(y, x)`` slice flipped as :func:`display_orientation` says."""
    out = slice_yx
    if flips[0]:
        out = out[::-1, :]
    if flips[1]:
        out = out[:, ::-1]
    return out


def slice_order(geometry: Geometry, nz: int) -> list[int]:
    """Slice indices from inferior to superior."""
    order = list(range(nz))
    return order if geometry.affine_lps[2, 2] >= 0 else order[::-1]


def slice_z_mm(geometry: Geometry, z: int) -> float:
    """Patient z (LPS, mm) of slice ``z``'s first voxel, for the panel label."""
    return float((geometry.affine_lps @ np.array([0.0, 0.0, float(z), 1.0]))[2])


def page_chunks(indices: list[int], per_page: int) -> list[list[int]]:
    """The slice indices of each page, ``per_page`` at most."""
    return [indices[i : i + per_page] for i in range(0, len(indices), per_page)]


def panel_boxes(
    n: int, top: float, bottom: float, right: float = 1.0
) -> list[tuple[int, int, int, int]]:
    """Pixel boxes ``(left, top, width, height)`` of ``n`` panels, 4 per row at most.

    Parameters
    ----------
    n : int
        Number of panels.
    top, bottom : float
        Page fractions kept free above and below the grid (title, footer).
    right : float
        Page fraction where the grid ends (room for a colour bar).

    Returns
    -------
    list of (int, int, int, int)
    """
    cols = min(4, n)
    rows = -(-n // cols)
    width = (right - 0.01) / cols
    height = (1 - top - bottom) / rows
    boxes = []
    for k in range(n):
        r, c = divmod(k, cols)
        boxes.append(
            (
                round((0.005 + c * width) * PAGE_WIDTH_PX),
                round((top + r * height + 0.01) * PAGE_HEIGHT_PX),
                round((width - 0.01) * PAGE_WIDTH_PX),
                round((height - 0.01) * PAGE_HEIGHT_PX),
            )
        )
    return boxes


def fit_panel(
    shape_yx: tuple[int, int], spacing_yx_mm: tuple[float, float], box: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    """Largest ``(left, top, width, height)`` inside ``box`` with the slice's true aspect."""
    left, top, width, height = box
    extent_y = shape_yx[0] * spacing_yx_mm[0]
    extent_x = shape_yx[1] * spacing_yx_mm[1]
    scale = min(width / extent_x, height / extent_y)
    w = max(1, round(extent_x * scale))
    h = max(1, round(extent_y * scale))
    return left + (width - w) // 2, top + (height - h) // 2, w, h


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.intp), n_in - 1)


def upsample_nearest(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """A ``(y, x, ...)`` image scaled to ``h x w`` by nearest neighbour (crisp masks)."""
    rows = _nearest_indices(image.shape[0], h)
    cols = _nearest_indices(image.shape[1], w)
    return image.take(rows, axis=0).take(cols, axis=1)


def outline_band(mask_yx: np.ndarray, width_px: int = OUTLINE_WIDTH_PX) -> np.ndarray:
    """Pixels within about ``width_px`` of the mask's edge, centred on it.

    The band lies half outside, half inside the mask, so a one-voxel lesion is still
    drawn as a ring and nested masks keep both outlines visible.
    """
    if not mask_yx.any():
        return np.zeros_like(mask_yx, dtype=bool)
    outside = max(1, width_px // 2)
    inside = max(1, width_px - outside)
    grown = ndimage.binary_dilation(mask_yx, iterations=outside)
    shrunk = ndimage.binary_erosion(mask_yx, iterations=inside, border_value=1)
    band: np.ndarray = grown & ~shrunk
    return band


class Canvas:
    """A page: RGB pixels first, then text drawn over them."""

    def __init__(self, fonts: Fonts) -> None:
        self.pixels = np.zeros((PAGE_HEIGHT_PX, PAGE_WIDTH_PX, 3), dtype=np.uint8)
        self.fonts = fonts
        self._texts: list[tuple[tuple[int, int], str, str, float, bool, str, bool]] = []

    def text(
        self,
        xy: tuple[float, float],
        text: str,
        *,
        colour: str | tuple[int, int, int] = TEXT,
        size_pt: float = 16,
        bold: bool = False,
        anchor: str = "lm",
        boxed: bool = False,
    ) -> None:
        """Queue ``text`` at pixel ``xy`` (Pillow anchor), drawn by :meth:`finish`."""
        hexed = "#{:02x}{:02x}{:02x}".format(*rgb(colour))
        point = (round(xy[0]), round(xy[1]))
        self._texts.append((point, text, hexed, size_pt, bold, anchor, boxed))

    def finish(self) -> np.ndarray:
        """The page as ``(y, x, 3)`` uint8 RGB, with every queued text drawn."""
        image = Image.fromarray(self.pixels, mode="RGB")
        draw = ImageDraw.Draw(image)
        for xy, text, colour, size_pt, bold, anchor, boxed in self._texts:
            font = self.fonts.get(size_pt, bold)
            if boxed:
                left, top, right, bottom = draw.textbbox(xy, text, font=font, anchor=anchor)
                draw.rectangle((left - 3, top - 3, right + 3, bottom + 3), fill=(0, 0, 0))
            draw.text(xy, text, fill=colour, font=font, anchor=anchor)
        return np.asarray(image, dtype=np.uint8).copy()

    def vertical_text(
        self, xy: tuple[int, int], text: str, *, size_pt: float, colour: str = TEXT
    ) -> None:
        """Draw ``text`` reading bottom to top, centred vertically on ``xy``."""
        font = self.fonts.get(size_pt)
        left, top, right, bottom = (round(v) for v in font.getbbox(text))
        strip = Image.new("L", (right - left + 4, bottom - top + 4), 0)
        ImageDraw.Draw(strip).text((2 - left, 2 - top), text, fill=255, font=font)
        rotated = np.asarray(strip.transpose(Image.Transpose.ROTATE_90), dtype=np.float32) / 255
        h, w = rotated.shape
        y0 = max(0, xy[1] - h // 2)
        x0 = xy[0]
        target = self.pixels[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
        rotated = rotated[: target.shape[0], : target.shape[1], None]
        ink = np.array(rgb(colour), dtype=np.float32)
        blended = target * (1 - rotated) + ink * rotated
        self.pixels[y0 : y0 + h, x0 : x0 + w] = blended.astype(np.uint8)


def page_frame(canvas: Canvas, title: str) -> None:
    """The title and the orientation footer every slice page has."""
    canvas.text((0.01 * PAGE_WIDTH_PX, 0.025 * PAGE_HEIGHT_PX), title, size_pt=24, bold=True)
    canvas.text(
        (0.01 * PAGE_WIDTH_PX, (1 - 0.012) * PAGE_HEIGHT_PX),
        PAGE_FOOTER,
        colour=MUTED,
        size_pt=13,
        anchor="ls",
    )


def label_panel(canvas: Canvas, rect: tuple[int, int, int, int], z_mm: float, index: int) -> None:
    """R and L in the bottom corners and the slice number and z at the top of a panel."""
    # Bottom corners, on a dark box: clear of the head and readable over bone.
    left, top, w, h = rect
    bottom = top + h - 0.02 * h
    canvas.text((left + 0.01 * w, bottom), "R", size_pt=18, bold=True, anchor="lb", boxed=True)
    canvas.text((left + 0.99 * w, bottom), "L", size_pt=18, bold=True, anchor="rb", boxed=True)
    canvas.text(
        (left + 0.02 * w, top + 0.02 * h),
        f"{index + 1}  z {z_mm:.0f} mm",
        colour=MUTED,
        size_pt=14,
        anchor="la",
    )
