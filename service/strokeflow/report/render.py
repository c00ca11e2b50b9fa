"""What the result pages show (modality-neutral content), and the summary page.

Pages are ``PAGE_HEIGHT_PX x PAGE_WIDTH_PX`` 8-bit RGB arrays with body text of about
26 px, readable when PACS scales the page to a diagnostic monitor. The summary page is
drawn with matplotlib (Agg canvas, no pyplot state) for its curve plot; one figure per
study, so its cost is fixed. matplotlib is imported only where a page is drawn (about
0.5 s): the result objects render their pages in a helper process
(:mod:`strokeflow.report.page_job`), forked after :mod:`strokeflow.report.warm` has
imported matplotlib in the background while the analysis ran. The slice pages (lesions,
maps) are composed with numpy and Pillow in :mod:`strokeflow.report.panels` (on
:mod:`strokeflow.report.canvas`), which is an order of magnitude faster.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from strokeflow.analysis.volume import Geometry

if TYPE_CHECKING:
    from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
    from matplotlib.figure import Figure

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
    """One treatment-selection rule and its outcome for the summary page.

    ``met`` is None when the rule cannot be decided (e.g. MRI without perfusion): the
    page then says "n/a", never "NO".
    """

    name: str
    met: bool | None
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
    curve_title : str
        Title of the curve plot.
    notice : str
        Shown large in orange in the curve area when there are no curves (e.g.
        "Perfusion not available: core only").
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
    curve_title: str = "Arterial input and venous output"
    notice: str = ""


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
    geometry : Geometry or None
        Grid of ``values_zyx`` when it is not the page set's (MR perfusion maps lie on
        the DSC grid, the ADC on the DWI grid).
    """

    name: str
    values_zyx: np.ndarray
    unit: str
    vmin: float
    vmax: float
    cmap: str = "turbo"
    geometry: Geometry | None = None


def _figure() -> tuple[Figure, FigureCanvasAgg]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PAGE_WIDTH_PX / _DPI, PAGE_HEIGHT_PX / _DPI), dpi=_DPI)
    fig.patch.set_facecolor(BACKGROUND)
    return fig, FigureCanvasAgg(fig)


def _to_rgb(fig: Figure, canvas: FigureCanvasAgg) -> np.ndarray:
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3]).copy()


def _box(fig: Figure, region: str, colour: str) -> None:
    from matplotlib.patches import Rectangle

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
    summary_figure(content, fig, canvas)
    return _to_rgb(fig, canvas)


#: Sizes (pt) the warnings and alerts may shrink to, largest first. A warning on a page sent
#: to PACS is never cut: the text gets smaller (rarely below 10 pt) instead.
_WARNING_SIZES_PT = (14.0, 13.0, 12.0, 11.0, 10.0, 9.0, 8.0, 7.0, 6.0)
_ALERT_SIZES_PT = (20.0, 18.0, 16.0, 14.0, 12.0)
#: Line pitch as a multiple of the font size.
_LINE_PITCH = 1.4
#: Where the warnings may go: the left column below the volumes, then the right column
#: below the curves (left, right, top fractions); both end above the footer.
_WARNINGS_BOTTOM = 0.92
_RIGHT_COLUMN = (0.56, 0.98, 0.72)
_LEFT_COLUMN_X = (0.02, 0.52)


def _pitch(size_pt: float) -> float:
    """Line pitch of ``size_pt`` text as a fraction of the page height."""
    return size_pt * _LINE_PITCH * _DPI / 72.0 / PAGE_HEIGHT_PX


def _wrap_px(
    text: str, width_px: float, size_pt: float, renderer: RendererAgg, bold: bool = False
) -> list[str]:
    """Greedy word wrap of ``text`` to lines no wider than ``width_px`` as drawn."""
    from matplotlib.font_manager import FontProperties

    prop = FontProperties(size=size_pt, weight="bold" if bold else "normal")

    def fits(line: str) -> bool:
        width, _, _ = renderer.get_text_width_height_descent(line, prop, ismath=False)
        return bool(width <= width_px)

    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if fits(candidate):
            current = candidate
            continue
        if current:
            lines.append(current)
        # A word wider than the line (a UID, a path) is cut between characters.
        while not fits(word) and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and not fits(word[:cut]):
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def summary_figure(content: SummaryContent, fig: Figure, canvas: FigureCanvasAgg) -> None:
    """Draw the summary page onto ``fig`` (tests measure its text extents)."""
    renderer = canvas.get_renderer()
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
        fig.text(
            0.015,
            _fy(0.168),
            _banner_line(content.quality_lines, renderer),
            color=TEXT,
            fontsize=14,
            va="center",
        )

    y = 0.225
    for k, decision in enumerate(content.decisions):
        size = 30 if k == 0 else 20
        answer = "n/a" if decision.met is None else ("YES" if decision.met else "NO")
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
            color=MUTED if decision.met is None else ("#00e0ff" if decision.met else TEXT),
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
    y = _draw_alerts(fig, content.alerts, y, renderer)

    # The volumes follow the alerts (at least where they always stood).
    y = max(0.48, y + 0.02)
    for label, value in content.volume_rows:
        fig.text(0.02, _fy(y), label, color=TEXT, fontsize=22, va="center")
        fig.text(
            0.50, _fy(y), value, color=TEXT, fontsize=24, fontweight="bold", va="center", ha="right"
        )
        y += 0.05
    curves_room = True
    if content.quality_lines:
        # y is one row pitch below the last volume row: start just under its text.
        # Below the curves, below the notice, or the whole right column when it is empty.
        right_top = _RIGHT_COLUMN[2] if content.curves else (0.50 if content.notice else 0.20)
        curves_room = _draw_warnings(fig, content.quality_lines, y - 0.02, right_top, bad, renderer)

    if content.curves and curves_room:
        _curve_axes(fig, content)
    if content.notice and curves_room:
        left, top, _, _ = SUMMARY_REGIONS["curves"]
        for i, line in enumerate(textwrap.wrap(content.notice, 27)[:4]):
            fig.text(
                left + 0.02,
                _fy(top + 0.08 + 0.06 * i),
                line,
                color="#ffa020",
                fontsize=26,
                fontweight="bold",
                va="center",
            )

    wrapped = [part for line in content.footer_lines for part in textwrap.wrap(line, 160)]
    for i, line in enumerate(wrapped[:3]):
        fig.text(0.015, _fy(0.940 + 0.022 * i), line, color=MUTED, fontsize=13, va="center")


def _banner_line(lines: list[str], renderer: RendererAgg) -> str:
    """The banner's second line: the first finding in full when it fits, else a count."""
    from matplotlib.font_manager import FontProperties

    more = len(lines) - 1
    first = lines[0] + (f"  (+{more} more, see below)" if more else "  (see below)")
    width, _, _ = renderer.get_text_width_height_descent(
        first, FontProperties(size=14), ismath=False
    )
    if width <= 0.97 * PAGE_WIDTH_PX:
        return first
    return f"{len(lines)} quality finding{'s' if len(lines) > 1 else ''}, in full below"


def _draw_alerts(fig: Figure, alerts: list[str], y: float, renderer: RendererAgg) -> float:
    """The red/orange alerts under the decisions, wrapped; returns the y below them."""
    if not alerts:
        return y
    left, right = _LEFT_COLUMN_X
    width_px = (right - left) * PAGE_WIDTH_PX
    # Shrink only when the alerts would push the volumes far down the page.
    for size in _ALERT_SIZES_PT:
        wrapped = [_wrap_px(a, width_px, size, renderer, bold=True) for a in alerts]
        if y + _pitch(size) * sum(map(len, wrapped)) <= 0.50:
            break
    pitch = _pitch(size)
    for alert, lines in zip(alerts, wrapped, strict=True):
        colour = "#ff4040" if alert.upper().startswith("WARNING") else "#ffa020"
        for line in lines:
            fig.text(
                left, _fy(y), line, color=colour, fontsize=size, fontweight="bold", va="center"
            )
            y += pitch
    return y


def _warning_rows(
    lines: list[str], columns: list[tuple[float, float, float]], renderer: RendererAgg
) -> tuple[float, list[str], list[int]] | None:
    """The largest size at which every finding fits ``columns``: (size, rows, rows per
    column); ``None`` when even the smallest size does not fit."""
    width_px = min(right - left for left, right, _ in columns) * PAGE_WIDTH_PX
    for size in _WARNING_SIZES_PT:
        pitch = _pitch(size)
        rows: list[str] = []
        for line in lines:
            wrapped = _wrap_px("! " + line, width_px, size, renderer)
            rows.extend([wrapped[0], *("   " + part for part in wrapped[1:])])
        capacity = [max(0, int((_WARNINGS_BOTTOM - top) / pitch)) for _, _, top in columns]
        if len(rows) <= sum(capacity):
            return size, rows, capacity
    return None


def _draw_warnings(
    fig: Figure,
    lines: list[str],
    top: float,
    right_top: float,
    bad: bool,
    renderer: RendererAgg,
) -> bool:
    """Every quality finding in full: the left column below ``top``, then the right one
    below the curves, at the largest size that fits; nothing is ever cut.

    Returns
    -------
    bool
        Whether the curve plot still has its place. When the findings do not fit even at
        the smallest size, the right column is theirs from the top and the curves go.
    """
    left_column = (*_LEFT_COLUMN_X, top)
    right_column = (_RIGHT_COLUMN[0], _RIGHT_COLUMN[1], right_top)
    layout = _warning_rows(lines, [left_column, right_column], renderer)
    curves = layout is not None
    if layout is None:
        whole = (_RIGHT_COLUMN[0], _RIGHT_COLUMN[1], SUMMARY_REGIONS["curves"][1])
        layout = _warning_rows(lines, [left_column, whole], renderer)
        if layout is None:
            raise ValueError(
                f"{len(lines)} quality findings ({sum(map(len, lines))} characters) do not "
                "fit on the summary page even at 6 pt"
            )
        columns = [left_column, whole]
    else:
        columns = [left_column, right_column]
    size, rows, capacity = layout
    pitch = _pitch(size)
    colour = "#ff6060" if bad else TEXT
    placed = 0
    for (left, _, column_top), room in zip(columns, capacity, strict=True):
        for k, row in enumerate(rows[placed : placed + room]):
            y = _fy(column_top + pitch * (k + 0.5))
            fig.text(left, y, row, color=colour, fontsize=size, va="center")
        placed += room
    return curves


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
    ax.set_title(content.curve_title, color=TEXT, fontsize=18)
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
