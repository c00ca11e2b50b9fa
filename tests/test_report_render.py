"""Page rendering and mask resampling on small synthetic volumes."""

from __future__ import annotations

import numpy as np

from strokeflow.analysis.volume import Geometry
from strokeflow.report.panels import (
    colour_lut,
    outline_band,
    render_lesion_pages,
    render_map_pages,
)
from strokeflow.report.render import (
    CORE_RGB,
    SUMMARY_REGIONS,
    Decision,
    MapSpec,
    Outline,
    SummaryContent,
    render_summary_page,
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
