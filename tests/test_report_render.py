"""Page rendering and mask resampling on small synthetic volumes."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from strokeflow.analysis.decisions import RULE_SETS
from strokeflow.analysis.volume import Geometry
from strokeflow.report.panels import (
    colour_lut,
    outline_band,
    render_lesion_pages,
    render_map_pages,
)
from strokeflow.report.render import (
    CORE_RGB,
    PAGE_HEIGHT_PX,
    PAGE_WIDTH_PX,
    SUMMARY_REGIONS,
    Curve,
    Decision,
    MapSpec,
    Outline,
    SummaryContent,
    render_summary_page,
    summary_figure,
)
from strokeflow.report.segmentation import mask_to_grid


def _geometry(flip_x: bool = False) -> Geometry:
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    if flip_x:
        affine[0, 0] = -2.0
    return Geometry(affine)


def _magenta(page: np.ndarray) -> np.ndarray:
    return np.all(np.abs(page.astype(int) - np.array(CORE_RGB)) <= 60, axis=-1)


def test_core_outline_appears_only_in_the_panel_of_its_slice() -> None:
    anatomy = np.full((2, 40, 40), 40.0)
    core = np.zeros((2, 40, 40), dtype=bool)
    core[0, 15:25, 15:25] = True
    (page,) = render_lesion_pages(
        anatomy, [Outline("core", core, CORE_RGB)], _geometry(), title="test"
    )
    magenta = _magenta(page[80:-60])
    half = page.shape[1] // 2
    # Two slices give two panels side by side: slice 0 on the left half.
    assert magenta[:, :half].sum() > 20
    assert magenta[:, half:].sum() == 0


def test_patient_left_is_drawn_on_the_right_whatever_the_column_direction() -> None:
    for flip_x in (False, True):
        geometry = _geometry(flip_x)
        anatomy = np.full((1, 40, 40), 40.0)
        core = np.zeros((1, 40, 40), dtype=bool)
        # The half of the columns that lies towards the patient's left.
        left_columns = slice(28, 36) if geometry.patient_left_sign_x() > 0 else slice(4, 12)
        core[0, 16:24, left_columns] = True
        (page,) = render_lesion_pages(
            anatomy, [Outline("core", core, CORE_RGB)], geometry, title="test"
        )
        _, xs = np.nonzero(_magenta(page[80:-60]))
        assert xs.size > 0
        assert xs.mean() > page.shape[1] / 2, f"flip_x={flip_x}: patient left not on the right"


def test_mask_to_grid_recovers_the_fine_grid_of_a_binned_mask() -> None:
    fine = Geometry(np.diag([0.5, 0.5, 5.0, 1.0]))
    coarse = fine.downsampled(4)
    rng = np.random.default_rng(0)
    mask = rng.random((3, 8, 8)) > 0.5
    upsampled = mask_to_grid(mask, coarse, fine, (3, 32, 32))
    expected = np.repeat(np.repeat(mask, 4, axis=1), 4, axis=2)
    np.testing.assert_array_equal(upsampled, expected)


def test_mask_to_grid_is_false_outside_the_mask_grid() -> None:
    fine = Geometry(np.diag([1.0, 1.0, 5.0, 1.0]))
    mask = np.ones((2, 4, 4), dtype=bool)
    out = mask_to_grid(mask, fine, fine, (3, 6, 6))
    assert out[:2, :4, :4].all()
    assert not out[2].any() and not out[:, 4:, :].any() and not out[:, :, 4:].any()


def test_outline_band_rings_the_mask_edge_and_leaves_its_inside_empty() -> None:
    mask = np.zeros((30, 30), dtype=bool)
    mask[10:20, 10:20] = True
    band = outline_band(mask, width_px=3)
    assert band[10, 15] and band[9, 15]  # on the edge, inside and just outside
    assert not band[15, 15]  # centre stays visible
    assert not band[2, 2]  # far outside
    assert not outline_band(np.zeros((5, 5), dtype=bool)).any()


def test_map_page_colour_bar_runs_from_vmax_at_the_top_to_vmin_at_the_bottom() -> None:
    values = np.full((1, 20, 20), 5.0, dtype=np.float32)
    (page,) = render_map_pages([MapSpec("Tmax", values, "s", 0.0, 12.0)], _geometry(), title="t")
    lut = colour_lut("turbo")
    bar = page[:, int(0.915 * page.shape[1]) + 5]
    top, bottom = int(0.1 * page.shape[0]) + 2, int(0.9 * page.shape[0]) - 3
    np.testing.assert_allclose(bar[top], lut[255], atol=12)
    np.testing.assert_allclose(bar[bottom], lut[0], atol=12)


def test_summary_page_says_n_a_for_undecidable_rules_not_no() -> None:
    content = SummaryContent(
        title="MR stroke",
        header_lines=["Patient: X"],
        decisions=[Decision("DEFUSE 3 target mismatch", None, "rule")],
        alerts=[],
        volume_rows=[("Core", "10.0 mL")],
        quality_ok=True,
        quality_lines=[],
    )
    page = render_summary_page(content)
    left, top, right, bottom = SUMMARY_REGIONS["decisions"]
    h, w, _ = page.shape
    decisions = page[int(top * h) : int(bottom * h), int(left * w) : int(right * w)]
    # "n/a" is grey; a YES would be cyan (0, 224, 255).
    cyan = np.all(np.abs(decisions.astype(int) - np.array([0, 224, 255])) <= 40, axis=-1)
    assert not cyan.any()


ANALYSIS = Path(__file__).resolve().parents[1] / "service" / "strokeflow" / "analysis"
#: Stands for a number or a name filled in at run time: longer than any real one.
FILLED = "9999.9"
#: Stands for text the flag quotes from elsewhere (motion messages, an exception).
QUOTED = "quoted text from another module that the flag repeats, of some length"


def _message(node: ast.expr, appended: dict[str, list[ast.expr]]) -> str:
    """The longest text a flag's message expression can produce."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_message(v, appended) for v in node.values)
    if isinstance(node, ast.FormattedValue):
        # A formatted number is short; an exception or a name quoted whole may be long.
        return FILLED if node.format_spec is not None else QUOTED
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _message(node.left, appended) + _message(node.right, appended)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "join"
        and isinstance(node.func.value, ast.Constant)
    ):
        (items,) = node.args
        if isinstance(items, ast.Name) and items.id in appended:
            # Every problem the function can list, all at once.
            parts = [_message(p, appended) for p in appended[items.id]]
        else:
            parts = [QUOTED] * 3
        return str(node.func.value.value).join(parts)
    return QUOTED


def flag_texts(module: str) -> list[str]:
    """Every QualityFlag an analysis module can raise, as the summary page lists it."""
    tree = ast.parse((ANALYSIS / module).read_text())
    texts = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        appended: dict[str, list[ast.expr]] = {}
        for node in ast.walk(function):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "append"
                and isinstance(node.func.value, ast.Name)
                and node.args
                and not isinstance(node.args[0], ast.Call)
            ):
                appended.setdefault(node.func.value.id, []).append(node.args[0])
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "QualityFlag":
                severity = _message(node.args[1], appended)
                texts.append(f"{severity.upper()}: {_message(node.args[2], appended)}")
    return texts


def _page_texts(content: SummaryContent) -> tuple[Figure, list[Text]]:
    fig = Figure(figsize=(PAGE_WIDTH_PX / 100, PAGE_HEIGHT_PX / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    summary_figure(content, fig, canvas)
    canvas.draw()
    return fig, [t for t in fig.texts if t.get_text().strip()]


def _long_content(lines: list[str], *, perfusion: bool) -> SummaryContent:
    rules = [Decision(r.name, True, "rule text") for r in RULE_SETS]
    return SummaryContent(
        title="CT perfusion" if perfusion else "MR stroke",
        header_lines=["Patient: X", "Study: Y"],
        decisions=rules,
        alerts=[f"WARNING: {rules[-1].name}", "HIR 0.55 > 0.4: poor collaterals likely"]
        + ([] if perfusion else ["Perfusion not available: core only"]),
        volume_rows=[
            ("Core (rCBF < 30 %)", "123.4 mL"),
            ("Tmax > 6 s", "234.5 mL"),
            ("Tmax > 10 s", "123.4 mL"),
            ("Mismatch", "111.1 mL"),
            ("Mismatch ratio", "1.90"),
            ("HIR", "0.55"),
        ],
        quality_ok=False,
        quality_lines=lines,
        curves=[Curve("AIF", np.arange(30.0), np.sin(np.arange(30.0)), "slice 2", (255, 0, 0))]
        if perfusion
        else [],
        notice="" if perfusion else "Perfusion not available: core only",
        footer_lines=["Method: oSVD. " * 8, "Decision support only. " * 6],
    )


#: The MR pipeline's modules that raise quality flags.
MRI_MODULES = ["mri.py", "mri_diffusion.py", "mri_perfusion.py"]


@pytest.mark.parametrize(
    ("modules", "perfusion"),
    [(["ctp.py", "ctp_quality.py"], True), (MRI_MODULES, False), (MRI_MODULES, True)],
)
def test_every_quality_flag_is_shown_in_full_on_the_summary_page(
    modules: list[str], perfusion: bool
) -> None:
    lines = [text for module in modules for text in flag_texts(module)]
    assert len(lines) >= 8 and max(map(len, lines)) > 150  # the parser found the long ones
    content = _long_content(lines, perfusion=perfusion)
    fig, texts = _page_texts(content)
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    page = fig.bbox
    boxes = [t.get_window_extent(renderer) for t in texts]
    for text, box in zip(texts, boxes, strict=True):
        assert box.x0 >= page.x0 and box.x1 <= page.x1, text.get_text()
        assert box.y0 >= page.y0 and box.y1 <= page.y1, text.get_text()
        assert text.get_fontsize() >= 6
    for i, j in itertools.combinations(range(len(texts)), 2):
        # Overlapping text would hide part of a warning.
        assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())
    shown = " ".join(" ".join(t.get_text().split()) for t in texts)
    for line in [*lines, *content.alerts]:
        assert " ".join(("! " + line).split()) in shown or " ".join(line.split()) in shown, line
    assert "…" not in shown


def test_a_short_finding_is_shown_in_full_in_the_banner_too() -> None:
    content = _long_content(["WARNING: head motion up to 4.2 mm was corrected"], perfusion=True)
    _, texts = _page_texts(content)
    assert any(t.get_text().startswith("WARNING: head motion up to 4.2 mm") for t in texts)
