"""Lesion outline and parametric map pages, composed with numpy and lettered with Pillow.

The two page types; their canvas (fonts, layout, orientation) is
:mod:`strokeflow.report.canvas`.

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

import matplotlib
import numpy as np
from matplotlib.ticker import MaxNLocator
from PIL import Image

from strokeflow.analysis.volume import Geometry
from strokeflow.report.canvas import (
    Canvas,
    Fonts,
    crop_box,
    display_orientation,
    fit_panel,
    label_panel,
    oriented,
    outline_band,
    page_chunks,
    page_frame,
    panel_boxes,
    slice_order,
    slice_z_mm,
    upsample_nearest,
)
from strokeflow.report.render import PAGE_HEIGHT_PX, PAGE_WIDTH_PX, MapSpec, Outline

__all__ = ["colour_lut", "outline_band", "render_lesion_pages", "render_map_pages"]


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
    fonts = Fonts()
    flips = display_orientation(geometry)
    _, dy, dx = geometry.voxel_size_mm
    chunks = page_chunks(slice_order(geometry, anatomy_zyx.shape[0]), slices_per_page)
    box = crop_box(anatomy_zyx > window[0] - 200.0 if head_zyx is None else head_zyx)
    lo, hi = window
    grey = np.clip((anatomy_zyx[:, box[0], box[1]] - lo) * (255.0 / (hi - lo)), 0, 255)
    grey = np.nan_to_num(grey).astype(np.uint8)
    colours = [np.array(o.colour_rgb, dtype=np.uint8) for o in outlines]
    pages = []
    for p, chunk in enumerate(chunks):
        canvas = Canvas(fonts)
        page_frame(canvas, f"{title}  (page {p + 1}/{len(chunks)})")
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
            image = oriented(grey[z], flips)
            left, top, w, h = rect = fit_panel(image.shape, (dy, dx), panel)
            scaled = Image.fromarray(image, mode="L").resize((w, h), Image.Resampling.BILINEAR)
            tile = np.repeat(np.asarray(scaled)[:, :, None], 3, axis=2)
            # Reversed: the first outline (the core) ends up on top of the others.
            for outline, colour in zip(outlines[::-1], colours[::-1], strict=True):
                mask = oriented(outline.mask_zyx[z][box], flips)
                if mask.any():
                    tile[outline_band(upsample_nearest(mask, h, w))] = colour
            canvas.pixels[top : top + h, left : left + w] = tile
            label_panel(canvas, rect, slice_z_mm(geometry, z), z)
        pages.append(canvas.finish())
    return pages


def colour_lut(cmap: str) -> np.ndarray:
    """``(256, 3)`` uint8 colours of a matplotlib colour map."""
    table = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256), bytes=True)
    return np.ascontiguousarray(table[:, :3])


def _colour_bar(canvas: Canvas, spec: MapSpec, lut: np.ndarray) -> None:
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
    fonts = Fonts()
    pages = []
    for spec in maps:
        grid = spec.geometry or geometry
        flips = display_orientation(grid)
        _, dy, dx = grid.voxel_size_mm
        chunks = page_chunks(slice_order(grid, spec.values_zyx.shape[0]), slices_per_page)
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
            canvas = Canvas(fonts)
            suffix = f"  (page {p + 1}/{len(chunks)})" if len(chunks) > 1 else ""
            page_frame(canvas, f"{title}: {spec.name} ({spec.unit}){suffix}")
            for panel, z in zip(
                panel_boxes(len(chunk), 0.05, 0.035, right=0.9), chunk, strict=True
            ):
                image = oriented(rgb[z], flips)
                left, top, w, h = rect = fit_panel(image.shape[:2], (dy, dx), panel)
                canvas.pixels[top : top + h, left : left + w] = upsample_nearest(image, h, w)
                label_panel(canvas, rect, slice_z_mm(grid, z), z)
            _colour_bar(canvas, spec, lut)
            pages.append(canvas.finish())
    return pages
