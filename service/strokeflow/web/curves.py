"""The arterial input and venous output curves as an inline SVG chart (no JavaScript)."""

from __future__ import annotations

from html import escape

from strokeflow.web.schemas import Curve

_WIDTH, _HEIGHT, _MARGIN = 560, 260, 44


def curves_svg(curves: list[tuple[str, str, Curve]]) -> str:
    """An SVG line chart of time (s) against enhancement (HU).

    Parameters
    ----------
    curves : list of (label, colour, Curve)

    Returns
    -------
    str
        ``<svg>`` markup; empty string when there is no curve.
    """
    curves = [c for c in curves if c[2].times_s and len(c[2].times_s) == len(c[2].curve_hu)]
    if not curves:
        return ""
    t_max = max(max(c.times_s) for _, _, c in curves) or 1.0
    hu_values = [v for _, _, c in curves for v in c.curve_hu]
    hu_min, hu_max = min(0.0, min(hu_values)), max(hu_values)
    span = (hu_max - hu_min) or 1.0
    plot_w, plot_h = _WIDTH - 2 * _MARGIN, _HEIGHT - 2 * _MARGIN

    def xy(t: float, hu: float) -> str:
        x = _MARGIN + t / t_max * plot_w
        y = _HEIGHT - _MARGIN - (hu - hu_min) / span * plot_h
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {_HEIGHT}" '
        f'class="curves" role="img" aria-label="AIF and VOF curves">',
        f'<rect x="{_MARGIN}" y="{_MARGIN}" width="{plot_w}" height="{plot_h}" '
        'fill="none" stroke="#888"/>',
        f'<text x="{_WIDTH / 2:.0f}" y="{_HEIGHT - 8}" text-anchor="middle">time (s)</text>',
        f'<text x="12" y="{_HEIGHT / 2:.0f}" transform="rotate(-90 12 {_HEIGHT / 2:.0f})" '
        'text-anchor="middle">enhancement (HU)</text>',
        f'<text x="{_MARGIN - 4}" y="{_MARGIN + 4}" text-anchor="end">{hu_max:.0f}</text>',
        f'<text x="{_MARGIN - 4}" y="{_HEIGHT - _MARGIN}" text-anchor="end">{hu_min:.0f}</text>',
        f'<text x="{_WIDTH - _MARGIN}" y="{_HEIGHT - _MARGIN + 16}" text-anchor="end">'
        f"{t_max:.0f}</text>",
    ]
    for k, (label, colour, curve) in enumerate(curves):
        points = " ".join(xy(t, v) for t, v in zip(curve.times_s, curve.curve_hu, strict=True))
        parts.append(
            f'<polyline fill="none" stroke="{escape(colour)}" stroke-width="2" points="{points}"/>'
        )
        peak = f" (peak {curve.peak_hu:.0f} HU)" if curve.peak_hu is not None else ""
        parts.append(
            f'<text x="{_MARGIN + 8}" y="{_MARGIN + 16 + 16 * k}" fill="{escape(colour)}">'
            f"{escape(label)}{peak}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
