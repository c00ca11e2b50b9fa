"""Series recognition in a study, and the DICOM time parsing the ordering relies on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicomfactory import (
    ENHANCED_CT_IMAGE_STORAGE,
    StudyTags,
    ramp_signal,
    uid,
    write_ct_volume,
    write_ctp_series,
    write_ctp_time_point_series,
)
from strokeflow.assemble import assemble_ctp, build_inventory, scan_paths
from strokeflow.assemble.series import (
    SeriesSummary,
    parse_da_s,
    parse_dt_s,
    parse_tm_s,
    slice_normal,
    unwrap_midnight,
)
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study


def _mixed_study(root: Path, with_ctp: bool = True) -> StudyTags:
    study = StudyTags()
    vol = np.full((6, 16, 16), 30.0)
    write_ct_volume(
        root, vol, study=study, series_number=2, series_description="Head NCCT", kvp=120
    )
    write_ct_volume(
        root,
        vol,
        study=study,
        series_number=3,
        series_description="Arch to vertex",
        contrast_agent="Iohexol",
        kvp=100,
        slice_thickness_mm=1.0,
    )
    write_ct_volume(
        root,
        vol[:1],
        study=study,
        series_number=1,
        series_description="Topogram",
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    if with_ctp:
        write_ctp_series(root, ramp_signal(8, 3), np.arange(8) * 2.0, study=study, series_number=4)
    return study


def test_mixed_study_series_are_recognised(tmp_path: Path) -> None:
    _mixed_study(tmp_path)
    headers, problems = scan_paths([tmp_path])
    assert problems == []
    (study,) = build_inventory(headers)
    kinds = {s.series_number: s.kind for s in study.series}
    assert kinds == {1: "localizer", 2: "ncct", 3: "cta", 4: "ctp"}
    ctp = study.series[-1]
    assert (ctp.n_instances, ctp.n_positions, ctp.n_timepoints) == (24, 3, 8)
    assert "time resolved" in ctp.reason


def test_cta_is_recognised_from_its_description(tmp_path: Path) -> None:
    write_ct_volume(tmp_path, np.zeros((3, 4, 4)), series_description="CTA head/neck")
    (study,) = build_inventory(scan_paths([tmp_path])[0])
    assert study.series[0].kind == "cta"


def test_folder_without_perfusion_says_what_was_found(tmp_path: Path) -> None:
    _mixed_study(tmp_path, with_ctp=False)
    (study,) = build_inventory(scan_paths([tmp_path])[0])
    assert assemble_ctp(study) == []
    assert sorted(s.kind for s in study.series) == ["cta", "localizer", "ncct"]
    assert all(s.reason for s in study.series)


def test_multiphase_cta_is_not_taken_for_perfusion(tmp_path: Path) -> None:
    write_ctp_series(tmp_path, ramp_signal(3, 4), np.array([0.0, 8.0, 16.0]))
    (study,) = build_inventory(scan_paths([tmp_path])[0])
    (series,) = study.series
    assert series.kind == "other"
    assert "only 3 time points" in series.reason


def _by_uid(root: Path) -> dict[str, SeriesSummary]:
    (study,) = build_inventory(scan_paths([root])[0])
    return {s.series_uid: s for s in study.series}


def test_one_series_per_time_point_is_one_perfusion(tmp_path: Path) -> None:
    uids = write_ctp_time_point_series(tmp_path, ramp_signal(8, 3), np.arange(8) * 2.0)
    series = _by_uid(tmp_path)
    assert sorted(series) == sorted(uids)
    assert {s.kind for s in series.values()} == {"ctp"}
    assert {s.merged_series_uids for s in series.values()} == {tuple(uids)}
    assert series[uids[2]].reason == (
        "time point 3 of 8 of one CT perfusion exported as 8 series (same frame of reference, "
        "orientation, matrix and 3 slice positions; every 2.0 s)"
    )


def test_series_of_a_few_time_points_with_one_series_number_are_one_perfusion(
    tmp_path: Path,
) -> None:
    # As a Toshiba Aquilion ONE writes a 4D volume: every series has SeriesNumber 8.
    uids = write_ctp_time_point_series(
        tmp_path, ramp_signal(8, 4), np.arange(8) * 1.0, points_per_series=2, series_number=8
    )
    series = _by_uid(tmp_path)
    assert [series[u].kind for u in uids] == ["ctp"] * 4
    assert series[uids[1]].reason.startswith("time points 3-4 of 8 of one CT perfusion")
    assert series[uids[1]].n_timepoints == 2


def test_too_few_time_points_stay_static_series(tmp_path: Path) -> None:
    uids = write_ctp_time_point_series(tmp_path, ramp_signal(4, 3), np.arange(4) * 2.0)
    series = _by_uid(tmp_path)
    assert [series[u].kind for u in uids] == ["ncct"] * 4
    assert all(not s.merged_series_uids for s in series.values())


def test_phantom_exported_per_time_point_keeps_its_ncct_and_cta_apart(tmp_path: Path) -> None:
    phantom = simulate_ctp(CtpPhantomOptions(matrix=32, slices=2, frames=6))
    write_ctp_study(phantom, tmp_path, split_series=6)
    (study,) = build_inventory(scan_paths([tmp_path])[0])
    kinds = {s.description: s.kind for s in study.series}
    assert kinds == {
        **{f"CT PERFUSION 5mm t{k:02d}": "ctp" for k in range(1, 7)},
        "NCCT HEAD 5mm": "ncct",
        "CTA HEAD 1mm": "cta",
        "TOPOGRAM HEAD": "localizer",
    }


def test_ncct_and_cta_of_one_geometry_are_not_merged(tmp_path: Path) -> None:
    # Same frame of reference, matrix, thickness, kVp and slice positions; the CTA is
    # told apart only by its description, three minutes later: two time points, not a run.
    study = StudyTags()
    vol = np.full((6, 16, 16), 30.0)
    write_ct_volume(tmp_path, vol, study=study, series_number=2, series_description="Head")
    write_ct_volume(
        tmp_path,
        vol + 200.0,
        study=study,
        series_number=3,
        series_description="CTA head",
        extra={"AcquisitionTime": "100800"},
    )
    kinds = sorted(s.kind for s in _by_uid(tmp_path).values())
    assert kinds == ["cta", "ncct"]


def test_static_scans_minutes_apart_are_not_merged(tmp_path: Path) -> None:
    # Six follow-up head scans of one protocol, two minutes apart.
    study = StudyTags()
    for k in range(6):
        write_ct_volume(
            tmp_path,
            np.full((4, 16, 16), 30.0),
            study=study,
            series_number=2 + k,
            extra={"AcquisitionTime": f"10{2 * k:02d}00"},
        )
    assert {s.kind for s in _by_uid(tmp_path).values()} == {"ncct"}


def test_a_time_point_of_another_protocol_stays_out(tmp_path: Path) -> None:
    study = StudyTags()
    signal, times = ramp_signal(6, 3), np.arange(6) * 2.0
    uids = write_ctp_time_point_series(tmp_path, signal, times, study=study)
    write_ctp_series(  # in the middle of the run, but at 120 kVp
        tmp_path, signal[:1], times[:1] + 5.0, study=study, series_number=40, kvp=120.0
    )
    series = _by_uid(tmp_path)
    assert [series[u].kind for u in uids] == ["ctp"] * 6
    (other,) = [s for u, s in series.items() if u not in uids]
    assert other.kind == "ncct" and not other.merged_series_uids


def test_second_reconstruction_per_time_point_is_a_perfusion_of_its_own(tmp_path: Path) -> None:
    study = StudyTags()
    signal, times = ramp_signal(6, 3), np.arange(6) * 2.0
    soft = write_ctp_time_point_series(tmp_path, signal, times, study=study)
    sharp = write_ctp_time_point_series(
        tmp_path, signal + 5, times, study=study, series_description="Perfusion sharp"
    )
    series = _by_uid(tmp_path)
    assert {series[u].merged_series_uids for u in soft} == {tuple(soft)}
    assert {series[u].merged_series_uids for u in sharp} == {tuple(sharp)}
    (study_inventory,) = build_inventory(scan_paths([tmp_path])[0])
    acquisitions = assemble_ctp(study_inventory)
    assert sorted(len(a.series_uids) for a in acquisitions) == [6, 6]


def test_gantry_tilt_is_named_in_the_reason(tmp_path: Path) -> None:
    tilt = np.radians(20.0)
    write_ctp_series(
        tmp_path,
        ramp_signal(6, 4),
        np.arange(6) * 2.0,
        orientation=(1.0, 0.0, 0.0, 0.0, np.cos(tilt), -np.sin(tilt)),
        slice_direction=(0.0, 0.0, 1.0),
        slice_spacing_mm=5.0 / np.cos(tilt),
    )
    (series,) = _by_uid(tmp_path).values()
    assert series.kind == "ctp"
    assert series.reason.endswith("; gantry tilt 20.0 deg (sheared grid)")


def test_enhanced_ct_without_functional_groups_is_other_with_reason(tmp_path: Path) -> None:
    write_ct_volume(tmp_path, np.zeros((2, 4, 4)), extra={"SOPClassUID": ENHANCED_CT_IMAGE_STORAGE})
    (study,) = build_inventory(scan_paths([tmp_path])[0])
    assert study.series[0].kind == "other"
    assert study.series[0].reason == "multi-frame CT without per-frame functional groups"


def test_two_studies_are_kept_apart(tmp_path: Path) -> None:
    write_ct_volume(tmp_path / "a", np.zeros((2, 4, 4)), study=StudyTags(study_uid=uid("A")))
    write_ct_volume(tmp_path / "b", np.zeros((2, 4, 4)), study=StudyTags(study_uid=uid("B")))
    studies = build_inventory(scan_paths([tmp_path])[0])
    assert sorted(s.study_uid for s in studies) == sorted([uid("A"), uid("B")])


def test_parse_dicom_times() -> None:
    assert parse_tm_s("101530.25") == pytest.approx(10 * 3600 + 15 * 60 + 30.25)
    assert parse_tm_s("10:15:30") == 10 * 3600 + 15 * 60 + 30
    assert parse_tm_s("1015") == 10 * 3600 + 15 * 60
    assert parse_tm_s("") is None and parse_tm_s("noon") is None
    day = parse_da_s("20240102")
    assert day is not None and parse_da_s("2024.01.02") == day
    assert parse_dt_s("20240102101530.5+0100") == pytest.approx(day + 36930.5)
    assert parse_da_s("20241340") is None


def test_unwrap_midnight_adds_a_day_after_the_wrap() -> None:
    times = np.array([86390.0, 86399.0, 4.0, 13.0])
    np.testing.assert_allclose(unwrap_midnight(times), [86390.0, 86399.0, 86404.0, 86413.0])
    same_day = np.array([100.0, 200.0])
    np.testing.assert_array_equal(unwrap_midnight(same_day), same_day)


def test_slice_normal_is_cross_of_row_and_column() -> None:
    np.testing.assert_allclose(slice_normal((1, 0, 0, 0, 1, 0)), [0, 0, 1])
    np.testing.assert_allclose(slice_normal((0, 1, 0, 0, 0, -1)), [-1, 0, 0])
    with pytest.raises(ValueError, match="parallel"):
        slice_normal((1, 0, 0, 1, 0, 0))
