"""Result pages as 8-bit RGB arrays: the summary, lesion outlines and perfusion maps.

Rendered with matplotlib (Agg canvas, no pyplot state): it gives anti-aliased text,
colour bars, curve plots and sub-pixel mask outlines (``contour``) out of the box, which
Pillow would need to re-implement. Pages are ``PAGE_HEIGHT_PX x PAGE_WIDTH_PX`` with
body text of about 26 px, readable when PACS scales the page to a diagnostic monitor.

Images are shown in radiological convention: the patient's right on the left of the
image, anterior at the top, with R and L labels on every panel. All volumes passed here
are ``(z, y, x)`` arrays on the grid described by ``geometry``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from strokeflow.analysis.volume import Geometry

PAGE_WIDTH_PX = 1600
PAGE_HEIGHT_PX = 1200
_DPI = 100

#: Page background and text colours (dark page: what PACS monitors and readers expect).
BACKGROUND = "#000000"
TEXT = "#ffffff"
MUTED = "#b0b0b0"
#: Unmissable colour of the quality banner when the result must not be trusted as is.
QUALITY_BAD_RGB = (220, 0, 0)
QUALITY_OK_RGB = (0, 140, 60)
#: Outline colours of the lesion pages (issue 5: core magenta, Tmax > 6 s green).
CORE_RGB = (255, 0, 255)
TMAX6_RGB = (0, 255, 0)
TMAX10_RGB = (255, 200, 0)

#: Where the blocks of the summary page are, as (left, top, right, bottom) fractions of
#: the page (top = 0). Tests look for colour and ink inside these boxes.
SUMMARY_REGIONS: dict[str, tuple[float, float, float, float]] = {
    "header": (0.0, 0.0, 1.0, 0.115),
    "quality": (0.0, 0.115, 1.0, 0.185),
    "decisions": (0.02, 0.20, 0.52, 0.44),
    "volumes": (0.02, 0.45, 0.52, 0.90),
    "curves": (0.56, 0.20, 0.98, 0.70),
    "footer": (0.0, 0.93, 1.0, 1.0),
}


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


@dataclass(frozen=True)
class Curve:
    """A vascular curve for the summary page.

    Attributes
    ----------
    label : str
        Legend text, e.g. ``"AIF"``.
    times_s, values : numpy.ndarray
        ``(n,)`` sample times (s from the first frame) and values (``unit``).
    location_text : str
        Where the curve was measured, for the legend.
    colour_rgb : tuple of int
        Line colour.
    """

    label: str
    times_s: np.ndarray
    values: np.ndarray
    location_text: str
    colour_rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Decision:
    """One treatment-selection rule and its outcome for the summary page."""

    name: str
    met: bool
    rule_text: str


@dataclass(frozen=True)
class SummaryContent:
    """Everything printed on the summary page (modality-neutral: CT and MR use it).

    Attributes
    ----------
    title : str
        E.g. ``"CT perfusion"``.
    header_lines : list of str
        Patient and study identification, copied from the source images.
    decisions : list of Decision
        Shown large, first the primary one.
    alerts : list of str
        Warnings shown in red under the decisions (e.g. malignant profile).
    volume_rows : list of (str, str)
        ``(label, value with unit)`` lines, e.g. ``("Core (rCBF < 30 %)", "23.4 mL")``.
    quality_ok : bool
        Green banner when True, red otherwise.
    quality_lines : list of str
        Quality flag messages (shown in the banner and below it).
    curves : list of Curve
        Vascular curves plotted on the right.
    curve_unit : str
        Y axis label of the curve plot.
    footer_lines : list of str
        Method, thresholds, software version, intended use.
    """

    title: str
    header_lines: list[str]
    decisions: list[Decision]
    alerts: list[str]
    volume_rows: list[tuple[str, str]]
    quality_ok: bool
    quality_lines: list[str]
    curves: list[Curve] = field(default_factory=list)
    curve_unit: str = "HU"
    footer_lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Outline:
    """A mask outlined on the lesion pages."""

    label: str
    mask_zyx: np.ndarray
    colour_rgb: tuple[int, int, int]


@dataclass(frozen=True)
class MapSpec:
    """One parametric map page.

    Attributes
    ----------
    name : str
        Title, e.g. ``"CBF"``.
    values_zyx : numpy.ndarray
        Map values (NaN outside the brain).
    unit : str
        Colour bar label, e.g. ``"mL/100 g/min"``.
    vmin, vmax : float
        Display range.
    cmap : str
        Matplotlib colour map name.
    """

    name: str
    values_zyx: np.ndarray
    unit: str
    vmin: float
    vmax: float
    cmap: str = "turbo"


def _figure() -> tuple[Figure, FigureCanvasAgg]:
    fig = Figure(figsize=(PAGE_WIDTH_PX / _DPI, PAGE_HEIGHT_PX / _DPI), dpi=_DPI)
    fig.patch.set_facecolor(BACKGROUND)
    return fig, FigureCanvasAgg(fig)


def _to_rgb(fig: Figure, canvas: FigureCanvasAgg) -> np.ndarray:
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3]).copy()


def _box(fig: Figure, region: str, colour: str) -> None:
    left, top, right, bottom = SUMMARY_REGIONS[region]
    fig.patches.append(
        Rectangle(
            (left, 1 - bottom),
            right - left,
            bottom - top,
            transform=fig.transFigure,
            facecolor=colour,
            edgecolor="none",
            zorder=0,
        )
    )


def _fy(top_fraction: float) -> float:
    """Figure y coordinate (0 at the bottom) of a position given from the top."""
    return 1.0 - top_fraction


def render_summary_page(content: SummaryContent) -> np.ndarray:
    """Draw the summary page.

    Parameters
    ----------
    content : SummaryContent
        Text, numbers and curves to show.

    Returns
    -------
    numpy.ndarray
        ``(PAGE_HEIGHT_PX, PAGE_WIDTH_PX, 3)`` uint8 RGB.
    """
    fig, canvas = _figure()
    _box(fig, "header", "#1c2a3a")
    fig.text(
        0.015,
        _fy(0.035),
        f"StrokeFlow  {content.title}",
        color=TEXT,
        fontsize=26,
        fontweight="bold",
        va="center",
    )
    fig.text(
        0.985,
        _fy(0.035),
        "NOT FOR PRIMARY DIAGNOSIS",
        color="#ffcc00",
        fontsize=20,
        fontweight="bold",
        va="center",
        ha="right",
    )
    for i, line in enumerate(content.header_lines[:2]):
        fig.text(0.015, _fy(0.075 + 0.028 * i), line, color=TEXT, fontsize=16, va="center")

    bad = not content.quality_ok
    _box(fig, "quality", _hex(QUALITY_BAD_RGB if bad else QUALITY_OK_RGB))
    banner = (
        "QUALITY NOT OK: check the source images before using these numbers"
        if bad
        else "Quality: no problems detected"
    )
    fig.text(0.015, _fy(0.137), banner, color=TEXT, fontsize=22, fontweight="bold", va="center")
    if content.quality_lines:
        first = content.quality_lines[0]
        more = len(content.quality_lines) - 1
        text = _clip(first, 120) + (f"  (+{more} more, see below)" if more else "")
        fig.text(0.015, _fy(0.168), text, color=TEXT, fontsize=14, va="center")

    y = 0.225
    for k, decision in enumerate(content.decisions):
        size = 30 if k == 0 else 20
        answer = "YES" if decision.met else "NO"
        fig.text(
            0.02,
            _fy(y),
            f"{decision.name}:",
            color=TEXT,
            fontsize=size,
            fontweight="bold",
            va="center",
        )
        fig.text(
            0.50,
            _fy(y),
            answer,
            color="#00e0ff" if decision.met else TEXT,
            fontsize=size,
            fontweight="bold",
            va="center",
            ha="right",
        )
        if k == 0:
            fig.text(
                0.02, _fy(y + 0.035), decision.rule_text, color=MUTED, fontsize=14, va="center"
            )
            y += 0.075
        else:
            y += 0.04
    for alert in content.alerts:
        colour = "#ff4040" if alert.upper().startswith("WARNING") else "#ffa020"
        fig.text(
            0.02,
            _fy(y),
            _clip(alert, 60),
            color=colour,
            fontsize=20,
            fontweight="bold",
            va="center",
        )
        y += 0.04

    y = 0.48
    for label, value in content.volume_rows:
        fig.text(0.02, _fy(y), label, color=TEXT, fontsize=22, va="center")
        fig.text(
            0.50, _fy(y), value, color=TEXT, fontsize=24, fontweight="bold", va="center", ha="right"
        )
        y += 0.05
    if bad:
        for line in content.quality_lines[: max(0, int((0.91 - y) / 0.028))]:
            fig.text(
                0.02, _fy(y), "! " + _clip(line, 85), color="#ff6060", fontsize=14, va="center"
            )
            y += 0.028

    if content.curves:
        _curve_axes(fig, content)

    wrapped = [part for line in content.footer_lines for part in textwrap.wrap(line, 160)]
    for i, line in enumerate(wrapped[:3]):
        fig.text(0.015, _fy(0.940 + 0.022 * i), line, color=MUTED, fontsize=13, va="center")
    return _to_rgb(fig, canvas)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _curve_axes(fig: Figure, content: SummaryContent) -> None:
    left, top, right, bottom = SUMMARY_REGIONS["curves"]
    # Leave room for tick labels and the legend inside the region.
    ax = fig.add_axes((left + 0.05, 1 - bottom + 0.12, right - left - 0.06, bottom - top - 0.16))
    ax.set_facecolor("#101010")
    for curve in content.curves:
        ax.plot(
            curve.times_s,
            curve.values,
            color=_hex(curve.colour_rgb),
            linewidth=3,
            label=curve.label,
        )
    ax.set_xlabel("time (s)", color=TEXT, fontsize=16)
    ax.set_ylabel(content.curve_unit, color=TEXT, fontsize=16)
    ax.set_title("Arterial input and venous output", color=TEXT, fontsize=18)
    ax.tick_params(colors=TEXT, labelsize=14)
    for spine in ax.spines.values():
        spine.set_color(MUTED)
    ax.legend(fontsize=15, facecolor="#202020", labelcolor=TEXT, edgecolor=MUTED)
    for i, curve in enumerate(content.curves):
        fig.text(
            left,
            1 - bottom + 0.045 - 0.03 * i,
            f"{curve.label}: {curve.location_text}",
            color=_hex(curve.colour_rgb),
            fontsize=14,
            va="center",
        )


def display_orientation(geometry: Geometry) -> tuple[bool, bool]:
    """Flips ``(flip_rows, flip_columns)`` that show a slice in radiological convention.

    Radiological convention puts the patient's right on the viewer's left (so the
    x index must increase towards the patient's left) and anterior at the top (the y
    index must increase towards posterior).
    """
    return geometry.patient_posterior_sign_y() < 0, geometry.patient_left_sign_x() < 0


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


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, n)
    rows = -(-n // cols)
    return rows, cols


def _panel_axes(fig: Figure, n: int, top: float, bottom: float, right: float = 1.0) -> list[Axes]:
    rows, cols = _grid(n)
    width = (right - 0.01) / cols
    height = (1 - top - bottom) / rows
    axes = []
    for k in range(n):
        r, c = divmod(k, cols)
        ax = fig.add_axes(
            (0.005 + c * width, 1 - top - (r + 1) * height, width - 0.01, height - 0.01)
        )
        ax.set_axis_off()
        axes.append(ax)
    return axes


def _label_panel(ax: Axes, z_mm: float, index: int) -> None:
    # Bottom corners, on a dark box: clear of the head and readable over bone.
    style: dict[str, Any] = {
        "color": TEXT,
        "fontsize": 18,
        "fontweight": "bold",
        "transform": ax.transAxes,
        "bbox": {"facecolor": "black", "alpha": 0.7, "edgecolor": "none", "pad": 2},
    }
    ax.text(0.01, 0.02, "R", va="bottom", ha="left", **style)
    ax.text(0.99, 0.02, "L", va="bottom", ha="right", **style)
    ax.text(
        0.02,
        0.98,
        f"{index + 1}  z {z_mm:.0f} mm",
        va="top",
        ha="left",
        color=MUTED,
        fontsize=14,
        transform=ax.transAxes,
    )


def _slice_z_mm(geometry: Geometry, z: int) -> float:
    return float((geometry.affine_lps @ np.array([0.0, 0.0, float(z), 1.0]))[2])


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


def _pages(indices: list[int], per_page: int) -> list[list[int]]:
    return [indices[i : i + per_page] for i in range(0, len(indices), per_page)]


def render_lesion_pages(
    anatomy_zyx: np.ndarray,
    outlines: Sequence[Outline],
    geometry: Geometry,
    *,
    title: str,
    window: tuple[float, float] = (0.0, 80.0),
    slices_per_page: int = 12,
) -> list[np.ndarray]:
    """Outline lesion masks on the anatomy, every slice, in radiological orientation.

    Parameters
    ----------
    anatomy_zyx : numpy.ndarray
        Grey-scale anatomy (e.g. pre-contrast HU).
    outlines : sequence of Outline
        Masks of the same shape, outlined in their colour.
    geometry : Geometry
        Grid of ``anatomy_zyx``.
    title : str
        Page title.
    window : (float, float)
        Grey-scale display range of the anatomy.
    slices_per_page : int
        At most this many slices per page (4 columns).

    Returns
    -------
    list of numpy.ndarray
        ``(PAGE_HEIGHT_PX, PAGE_WIDTH_PX, 3)`` uint8 pages.
    """
    for outline in outlines:
        if outline.mask_zyx.shape != anatomy_zyx.shape:
            raise ValueError(
                f"{outline.label} mask has shape {outline.mask_zyx.shape}, the anatomy "
                f"{anatomy_zyx.shape}"
            )
    flips = display_orientation(geometry)
    order = _slice_order(geometry, anatomy_zyx.shape[0])
    chunks = _pages(order, slices_per_page)
    # Air lies far below the window; everything else (skull, brain) is kept in the crop.
    box = crop_box(anatomy_zyx > window[0] - 200.0)
    pages = []
    for p, chunk in enumerate(chunks):
        fig, canvas = _figure()
        fig.text(
            0.01,
            0.975,
            f"{title}  (page {p + 1}/{len(chunks)})",
            color=TEXT,
            fontsize=24,
            fontweight="bold",
            va="center",
        )
        for k, outline in enumerate(outlines):
            fig.text(
                0.42 + 0.32 * k,
                0.975,
                f"■ {outline.label}",
                color=_hex(outline.colour_rgb),
                fontsize=20,
                fontweight="bold",
                va="center",
            )
        fig.text(
            0.01,
            0.012,
            "Radiological orientation: patient right on image left. NOT FOR PRIMARY DIAGNOSIS",
            color=MUTED,
            fontsize=13,
        )
        for ax, z in zip(_panel_axes(fig, len(chunk), 0.05, 0.035), chunk, strict=True):
            image = _oriented(anatomy_zyx[z][box], flips)
            ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], interpolation="bilinear")
            for outline in outlines:
                mask = _oriented(outline.mask_zyx[z][box], flips)
                if mask.any():
                    ax.contour(
                        mask.astype(np.float32),
                        levels=[0.5],
                        colors=[_hex(outline.colour_rgb)],
                        linewidths=2.5,
                    )
            _label_panel(ax, _slice_z_mm(geometry, z), z)
        pages.append(_to_rgb(fig, canvas))
    return pages


def render_map_pages(
    maps: Sequence[MapSpec], geometry: Geometry, *, title: str, slices_per_page: int = 16
) -> list[np.ndarray]:
    """One page per map (all slices, or several pages), each with a labelled colour bar.

    Parameters
    ----------
    maps : sequence of MapSpec
        Maps to draw, ``(z, y, x)`` on ``geometry``.
    geometry : Geometry
        Grid of the maps.
    title : str
        Prefix of each page title, e.g. ``"CT perfusion"``.
    slices_per_page : int
        At most this many slices per page.

    Returns
    -------
    list of numpy.ndarray
        ``(PAGE_HEIGHT_PX, PAGE_WIDTH_PX, 3)`` uint8 pages, in the order of ``maps``.
    """
    flips = display_orientation(geometry)
    pages = []
    for spec in maps:
        order = _slice_order(geometry, spec.values_zyx.shape[0])
        chunks = _pages(order, slices_per_page)
        box = crop_box(np.isfinite(spec.values_zyx))
        for p, chunk in enumerate(chunks):
            fig, canvas = _figure()
            suffix = f"  (page {p + 1}/{len(chunks)})" if len(chunks) > 1 else ""
            fig.text(
                0.01,
                0.975,
                f"{title}: {spec.name} ({spec.unit}){suffix}",
                color=TEXT,
                fontsize=24,
                fontweight="bold",
                va="center",
            )
            fig.text(
                0.01,
                0.012,
                "Radiological orientation: patient right on image left. NOT FOR PRIMARY DIAGNOSIS",
                color=MUTED,
                fontsize=13,
            )
            image_artist = None
            for ax, z in zip(
                _panel_axes(fig, len(chunk), 0.05, 0.035, right=0.9), chunk, strict=True
            ):
                values = _oriented(spec.values_zyx[z][box], flips)
                shown = np.ma.masked_invalid(values)
                image_artist = ax.imshow(
                    shown, cmap=spec.cmap, vmin=spec.vmin, vmax=spec.vmax, interpolation="nearest"
                )
                _label_panel(ax, _slice_z_mm(geometry, z), z)
            if image_artist is not None:
                cax = fig.add_axes((0.915, 0.1, 0.02, 0.8))
                bar = fig.colorbar(image_artist, cax=cax)
                bar.set_label(f"{spec.name} ({spec.unit})", color=TEXT, fontsize=20)
                bar.ax.tick_params(colors=TEXT, labelsize=16)
            pages.append(_to_rgb(fig, canvas))
    return pages
