"""Lesion outline and parametric map pages, composed with numpy and lettered with Pillow.

These pages are grids of image panels: a panel is a windowed or colour-mapped slice,
scaled to the panel with the voxel aspect kept, with mask outlines drawn as pixel bands.
Composing them as arrays costs a few tens of milliseconds per page, where a matplotlib
figure with one Axes per slice costs a few hundred (Axes creation and text layout
dominate), and analyze has a 10 s budget for a whole study.

Text is drawn with Pillow in DejaVu Sans, the font matplotlib ships (so the pages look
like the summary page, which stays with matplotlib for its curve plot). Font sizes are
given in points at the page's nominal 100 dpi, as on the summary page.

Panels are in radiological convention (patient right on the image left, anterior up,
R and L on every panel), slices from inferior to superior. Volumes are ``(z, y, x)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from strokeflow.analysis.volume import Geometry
from strokeflow.report.render import (
    MUTED,
    PAGE_HEIGHT_PX,
    PAGE_WIDTH_PX,
    TEXT,
    MapSpec,
    Outline,
)

_DPI = 100
#: Outline band width on the page (pixels): visible on a scaled-down PACS viewport.
OUTLINE_WIDTH_PX = 3
_FOOTER = "Radiological orientation: patient right on image left. NOT FOR PRIMARY DIAGNOSIS"


def _rgb(colour: str | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(colour, tuple):
        return colour
    value = colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


class _Fonts:
    """DejaVu Sans faces by (size in points, bold), loaded once per page set."""

    def __init__(self) -> None:
        self._dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        self._faces: dict[tuple[int, bool], ImageFont.FreeTypeFont] = {}

    def get(self, size_pt: float, bold: bool = False) -> ImageFont.FreeTypeFont:
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


def _oriented(slice_yx: np.ndarray, flips: tuple[bool, bool]) -> np.ndarray:
    out = slice_yx
    if flips[0]:
        out = out[::-1, :]
    if flips[1]:
        out = out[:, ::-1]
    return out


def _slice_order(geometry: Geometry, nz: int) -> list[int]:
    """Slice indices from inferior to superior."""
    order = list(range(nz))
    return order if geometry.affine_lps[2, 2] >= 0 else order[::-1]


def _slice_z_mm(geometry: Geometry, z: int) -> float:
    return float((geometry.affine_lps @ np.array([0.0, 0.0, float(z), 1.0]))[2])


def _chunks(indices: list[int], per_page: int) -> list[list[int]]:
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


def _fit(
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


def _upsample_nearest(image: np.ndarray, h: int, w: int) -> np.ndarray:
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


class _Canvas:
    """A page: RGB pixels first, then text drawn over them."""

    def __init__(self, fonts: _Fonts) -> None:
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
        hexed = "#{:02x}{:02x}{:02x}".format(*_rgb(colour))
        point = (round(xy[0]), round(xy[1]))
        self._texts.append((point, text, hexed, size_pt, bold, anchor, boxed))

    def finish(self) -> np.ndarray:
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
        ink = np.array(_rgb(colour), dtype=np.float32)
        blended = target * (1 - rotated) + ink * rotated
        self.pixels[y0 : y0 + h, x0 : x0 + w] = blended.astype(np.uint8)


def _page_frame(canvas: _Canvas, title: str) -> None:
    canvas.text((0.01 * PAGE_WIDTH_PX, 0.025 * PAGE_HEIGHT_PX), title, size_pt=24, bold=True)
    canvas.text(
        (0.01 * PAGE_WIDTH_PX, (1 - 0.012) * PAGE_HEIGHT_PX),
        _FOOTER,
        colour=MUTED,
        size_pt=13,
        anchor="ls",
    )


def _label_panel(canvas: _Canvas, rect: tuple[int, int, int, int], z_mm: float, index: int) -> None:
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


def render_lesion_pages(
    anatomy_zyx: np.ndarray,
    outlines: Sequence[Outline],
    geometry: Geometry,
    *,
    title: str,
    window: tuple[float, float] = (0.0, 80.0),
    slices_per_page: int = 12,
    head_zyx: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Outline lesion masks on the anatomy, every slice, in radiological orientation.

    Parameters
    ----------
    anatomy_zyx : numpy.ndarray
        Grey-scale anatomy (e.g. pre-contrast HU, or a DWI).
    outlines : sequence of Outline
        Masks of the same shape, outlined in their colour; the first is drawn on top.
    geometry : Geometry
        Grid of ``anatomy_zyx``.
    title : str
        Page title.
    window : (float, float)
        Grey-scale display range of the anatomy.
    slices_per_page : int
        At most this many slices per page (4 columns).
    head_zyx : numpy.ndarray, optional
        Bool mask the panels are cropped to; by default every voxel more than 200
        below the window's low end is air (right for CT in HU).

    Returns
    -------
    list of numpy.ndarray
        ``(PAGE_HEIGHT_PX, PAGE_WIDTH_PX, 3)`` uint8 pages.

    Raises
    ------
    ValueError
        If a mask does not have the anatomy's shape.
    """
    for outline in outlines:
        if outline.mask_zyx.shape != anatomy_zyx.shape:
            raise ValueError(
                f"{outline.label} mask has shape {outline.mask_zyx.shape}, the anatomy "
                f"{anatomy_zyx.shape}"
            )
    fonts = _Fonts()
    flips = display_orientation(geometry)
    _, dy, dx = geometry.voxel_size_mm
    chunks = _chunks(_slice_order(geometry, anatomy_zyx.shape[0]), slices_per_page)
    box = crop_box(anatomy_zyx > window[0] - 200.0 if head_zyx is None else head_zyx)
    lo, hi = window
    grey = np.clip((anatomy_zyx[:, box[0], box[1]] - lo) * (255.0 / (hi - lo)), 0, 255)
    grey = np.nan_to_num(grey).astype(np.uint8)
    colours = [np.array(o.colour_rgb, dtype=np.uint8) for o in outlines]
    pages = []
    for p, chunk in enumerate(chunks):
        canvas = _Canvas(fonts)
        _page_frame(canvas, f"{title}  (page {p + 1}/{len(chunks)})")
        x = 0.40 * PAGE_WIDTH_PX
        for outline in outlines:
            legend = f"■ {outline.label}"
            canvas.text(
                (x, 0.025 * PAGE_HEIGHT_PX),
                legend,
                colour=outline.colour_rgb,
                size_pt=20,
                bold=True,
            )
            x += fonts.get(20, bold=True).getlength(legend) + 40
        for panel, z in zip(panel_boxes(len(chunk), 0.05, 0.035), chunk, strict=True):
            image = _oriented(grey[z], flips)
            left, top, w, h = rect = _fit(image.shape, (dy, dx), panel)
            scaled = Image.fromarray(image, mode="L").resize((w, h), Image.Resampling.BILINEAR)
            tile = np.repeat(np.asarray(scaled)[:, :, None], 3, axis=2)
            # Reversed: the first outline (the core) ends up on top of the others.
            for outline, colour in zip(outlines[::-1], colours[::-1], strict=True):
                mask = _oriented(outline.mask_zyx[z][box], flips)
                if mask.any():
                    tile[outline_band(_upsample_nearest(mask, h, w))] = colour
            canvas.pixels[top : top + h, left : left + w] = tile
            _label_panel(canvas, rect, _slice_z_mm(geometry, z), z)
        pages.append(canvas.finish())
    return pages


def colour_lut(cmap: str) -> np.ndarray:
    """``(256, 3)`` uint8 colours of a matplotlib colour map."""
    table = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256), bytes=True)
    return np.ascontiguousarray(table[:, :3])


def _colour_bar(canvas: _Canvas, spec: MapSpec, lut: np.ndarray) -> None:
    left = round(0.915 * PAGE_WIDTH_PX)
    width = round(0.02 * PAGE_WIDTH_PX)
    top = round(0.1 * PAGE_HEIGHT_PX)
    height = round(0.8 * PAGE_HEIGHT_PX)
    levels = np.linspace(255, 0, height).round().astype(np.intp)
    canvas.pixels[top : top + height, left : left + width] = lut[levels][:, None, :]
    span = spec.vmax - spec.vmin
    candidates = np.asarray(MaxNLocator(nbins=6).tick_values(spec.vmin, spec.vmax), dtype=float)
    slack = 1e-9 * abs(span)
    ticks = candidates[(candidates >= spec.vmin - slack) & (candidates <= spec.vmax + slack)]
    step = float(ticks[1] - ticks[0]) if ticks.size > 1 else 1.0
    decimals = max(0, -int(np.floor(np.log10(abs(step))))) if step < 1 else 0
    right = left + width
    for value in ticks:
        y = top + round((spec.vmax - value) / span * (height - 1))
        canvas.pixels[max(0, y - 1) : y + 1, right : right + 8] = 255
        canvas.text((right + 12, y), f"{value:.{decimals}f}", size_pt=16, anchor="lm")
    label_x = right + 12 + round(max(len(f"{t:.{decimals}f}") for t in ticks) * 13) + 12
    canvas.vertical_text(
        (min(label_x, PAGE_WIDTH_PX - 40), top + height // 2),
        f"{spec.name} ({spec.unit})",
        size_pt=20,
    )


def render_map_pages(
    maps: Sequence[MapSpec], geometry: Geometry, *, title: str, slices_per_page: int = 16
) -> list[np.ndarray]:
    """One page per map (all slices, or several pages), each with a labelled colour bar.

    Parameters
    ----------
    maps : sequence of MapSpec
        Maps to draw, ``(z, y, x)`` on their ``geometry`` (or on ``geometry`` when the
        spec has none).
    geometry : Geometry
        Default grid of the maps.
    title : str
        Prefix of each page title, e.g. ``"CT perfusion"``.
    slices_per_page : int
        At most this many slices per page.

    Returns
    -------
    list of numpy.ndarray
        ``(PAGE_HEIGHT_PX, PAGE_WIDTH_PX, 3)`` uint8 pages, in the order of ``maps``.
    """
    fonts = _Fonts()
    pages = []
    for spec in maps:
        grid = spec.geometry or geometry
        flips = display_orientation(grid)
        _, dy, dx = grid.voxel_size_mm
        chunks = _chunks(_slice_order(grid, spec.values_zyx.shape[0]), slices_per_page)
        box = crop_box(np.isfinite(spec.values_zyx))
        values = spec.values_zyx[:, box[0], box[1]]
        finite = np.isfinite(values)
        scaled = (np.where(finite, values, spec.vmin) - spec.vmin) * (
            255.0 / (spec.vmax - spec.vmin)
        )
        levels = np.clip(scaled, 0, 255).round().astype(np.intp)
        lut = colour_lut(spec.cmap)
        rgb = lut[levels]
        rgb[~finite] = 0  # outside the brain: page background
        for p, chunk in enumerate(chunks):
            canvas = _Canvas(fonts)
            suffix = f"  (page {p + 1}/{len(chunks)})" if len(chunks) > 1 else ""
            _page_frame(canvas, f"{title}: {spec.name} ({spec.unit}){suffix}")
            for panel, z in zip(
                panel_boxes(len(chunk), 0.05, 0.035, right=0.9), chunk, strict=True
            ):
                image = _oriented(rgb[z], flips)
                left, top, w, h = rect = _fit(image.shape[:2], (dy, dx), panel)
                canvas.pixels[top : top + h, left : left + w] = _upsample_nearest(image, h, w)
                _label_panel(canvas, rect, _slice_z_mm(grid, z), z)
            _colour_bar(canvas, spec, lut)
            pages.append(canvas.finish())
    return pages
