"""A site's own Tmax thresholds add volumes named by their value; the rules keep 6 s / 10 s.

One small CT phantom written as DICOM and analysed twice through ``analyze_paths``: with
the published defaults and as a site that configured ``tmax_thresholds_s = (4, 8)``; and
the same for one small MR stroke phantom (DWI, ADC, DSC).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from strokeflow.analysis.decisions import extra_tmax_thresholds_s
from strokeflow.analysis.mri import MriSettings, analyse_mri
from strokeflow.analysis.settings import CtpSettings
from strokeflow.analyze import AnalyzeOptions, AnalyzeOutcome, analyze_paths
from strokeflow.assemble.files import scan_paths
from strokeflow.assemble.mri import assemble_mri
from strokeflow.assemble.series import build_inventory
from strokeflow.cli import _analysis_line
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.phantom.mri import MriPhantomOptions, simulate_mri
from strokeflow.phantom.mri_dicom import write_mri_study
from strokeflow.report import dicom_outputs
from strokeflow.report.content import result_content
from strokeflow.report.mri_content import mri_parts
from strokeflow.report.nifti import write_mri_maps
from strokeflow.report.page_job import PageSet, RenderedPages
from strokeflow.report.render import SummaryContent
from strokeflow.report.results_json import mri_summary
from strokeflow.report.summary import AnalysisSummary, TmaxVolume
from tools import require_tool


@dataclasses.dataclass
class Run:
    outcome: AnalyzeOutcome
    entry: dict[str, Any]
    page: SummaryContent
    sr_path: Path
    seg_path: Path


def _run(src: Path, out: Path, settings: CtpSettings, monkeypatch: pytest.MonkeyPatch) -> Run:
    pages: list[SummaryContent] = []
    real = dicom_outputs.start_rendering

    def recording(page_set: PageSet, *, parallel: bool = True) -> Callable[[], RenderedPages]:
        pages.append(page_set.summary)
        return real(page_set, parallel=parallel)

    # The summary page as it is handed to the renderer (a helper process draws it): the
    # labels a reader sees.
    monkeypatch.setattr(dicom_outputs, "start_rendering", recording)
    outcome = analyze_paths([src], out, AnalyzeOptions(ctp=settings, write_maps=False))
    results = json.loads((out / "results.json").read_text())
    (entry,) = results["studies"][0]["analyses"]
    (page,) = pages
    dicom = sorted((out / "dicom").rglob("*.dcm"))
    sr_path = next(p for p in dicom if "SR_" in p.name)
    seg_path = next(p for p in dicom if "SEG_" in p.name)
    return Run(outcome, entry, page, sr_path, seg_path)


def _texts(ds: pydicom.Dataset) -> list[str]:
    """Every TEXT value of an SR content tree."""
    out = []
    for item in ds.get("ContentSequence", []):
        if "TextValue" in item:
            out.append(str(item.TextValue))
        out += _texts(item)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    root = tmp_path_factory.mktemp("tmax_site")
    phantom = simulate_ctp(CtpPhantomOptions(seed=3, matrix=96, slices=6, frames=36))
    write_ctp_study(phantom, root / "src", extra_series=False)
    with pytest.MonkeyPatch.context() as monkeypatch:
        default = _run(root / "src", root / "default", CtpSettings(), monkeypatch)
    with pytest.MonkeyPatch.context() as monkeypatch:
        site = CtpSettings(tmax_thresholds_s=(4.0, 8.0))
        configured = _run(root / "src", root / "site", site, monkeypatch)
    return default, configured


def test_site_thresholds_leave_the_published_volumes_and_decisions_alone(
    runs: tuple[Run, Run],
) -> None:
    default, site = runs
    for key in ("core_ml", "tmax6_ml", "tmax10_ml", "mismatch_ml", "mismatch_ratio"):
        assert site.entry[key] == default.entry[key], key
    assert site.entry["decisions"] == default.entry["decisions"]
    assert site.entry["decision_rules"]["defuse2"]["rule"].endswith("tmax10_ml < 100")
    assert site.entry["tmax6_ml"] > site.entry["core_ml"] > 0
    (summary,) = site.outcome.summaries
    assert summary.job_fields() == default.outcome.summaries[0].job_fields()


def test_site_thresholds_are_extra_volumes_named_by_their_value_in_results_json(
    runs: tuple[Run, Run],
) -> None:
    default, site = runs
    volumes = site.entry["tmax_volumes_ml"]
    assert list(volumes) == ["4", "6", "8", "10"]
    assert volumes["6"] == site.entry["tmax6_ml"] and volumes["10"] == site.entry["tmax10_ml"]
    assert volumes["4"] >= volumes["6"] >= volumes["8"] >= volumes["10"]
    assert volumes["4"] > volumes["6"]  # the benign oligaemia lies between 4 s and 6 s
    assert site.entry["thresholds"]["tmax_s_above"] == [4.0, 6.0, 8.0, 10.0]
    assert default.entry["tmax_volumes_ml"] == {
        "6": default.entry["tmax6_ml"],
        "10": default.entry["tmax10_ml"],
    }
    line = _analysis_line(site.outcome.summaries[0])
    assert "Tmax>4s" in line and "Tmax>8s" in line and "Tmax>6s" in line


def test_summary_page_labels_every_volume_by_its_threshold(runs: tuple[Run, Run]) -> None:
    default, site = runs
    rows = dict(site.page.volume_rows)
    for value in ("4", "6", "8", "10"):
        volume = site.entry["tmax_volumes_ml"][value]
        assert rows[f"Tmax > {value} s"] == f"{volume:.1f} mL"
    labels = [label for label, _ in default.page.volume_rows]
    assert not [label for label in labels if label in ("Tmax > 4 s", "Tmax > 8 s")]
    assert {d.name for d in site.page.decisions} == {d.name for d in default.page.decisions}
    assert [d.met for d in site.page.decisions] == [d.met for d in default.page.decisions]


def test_sr_and_seg_name_the_extra_regions_by_their_threshold(runs: tuple[Run, Run]) -> None:
    _, site = runs
    report = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(site.sr_path)).content
    volumes, finding_types = {}, {}
    for group in report.get_volumetric_roi_measurement_groups():
        (volume,) = [m for m in group.get_measurements() if m.name.meaning == "Volume"]
        volumes[group.tracking_identifier] = volume.value
        finding_types[group.tracking_identifier] = group.finding_type
    # The published regions keep their places; the site's extras come after them.
    assert list(volumes) == ["core", "tmax6", "tmax10", "mismatch", "tmax4", "tmax8"]
    for value in ("4", "6", "8", "10"):
        assert volumes[f"tmax{value}"] == site.entry["tmax_volumes_ml"][value]
        code = finding_types[f"tmax{value}"]
        assert code.value == f"TMAX_ABOVE_{value}S"
        assert code.meaning.endswith(f"Tmax > {value} s")
    seg = pydicom.dcmread(site.seg_path)
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels[1:3] == ["Tmax > 6 s", "Tmax > 10 s"]
    assert labels[4:] == ["Tmax > 4 s", "Tmax > 8 s"]
    dump = subprocess.run(
        [require_tool("dsrdump", "dcmtk"), "-Ee", str(site.sr_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert dump.returncode == 0, dump.stderr
    for value in ("4", "6", "8", "10"):
        assert f"TMAX_ABOVE_{value}S" in dump.stdout
        assert f"Tmax > {value} s" in dump.stdout
    parameters = [t for t in _texts(pydicom.dcmread(site.sr_path)) if "hypoperfusion:" in t]
    assert set(parameters) == {
        "hypoperfusion: Tmax > 4 s, Tmax > 6 s, Tmax > 8 s and Tmax > 10 s; "
        "decisions on Tmax > 6 s and Tmax > 10 s"
    }


def test_thresholds_must_be_positive_and_the_published_ones_are_not_extra() -> None:
    assert extra_tmax_thresholds_s((8, 4.0, 6.0, 10.0, 4)) == (4.0, 8.0)
    assert extra_tmax_thresholds_s((6.0, 10.0)) == ()
    with pytest.raises(ValueError, match="tmax_thresholds_s"):
        extra_tmax_thresholds_s((0.0, 8.0))
    with pytest.raises(ValueError, match="Tmax threshold"):
        TmaxVolume(float("nan"), None)


def test_summary_refuses_a_record_without_the_published_thresholds(
    runs: tuple[Run, Run],
) -> None:
    summary: AnalysisSummary = runs[1].outcome.summaries[0]
    without_ten = tuple(t for t in summary.tmax if t.threshold_s != 10.0)
    with pytest.raises(ValueError, match="published thresholds"):
        dataclasses.replace(summary, tmax=without_ten)
    with pytest.raises(ValueError, match="core_ml"):
        dataclasses.replace(summary, core_ml=-1.0)
    with pytest.raises(ValueError, match="details repeat"):
        dataclasses.replace(summary, details={**summary.details, "core_ml": 1.0})


def test_mr_site_thresholds_add_volumes_and_keep_the_published_ones(tmp_path: Path) -> None:
    options = MriPhantomOptions(seed=5, dwi_matrix=64, pwi_matrix=48, slices=8, frames=40)
    write_mri_study(simulate_mri(options), tmp_path / "src", distractors=False)
    acquisition = assemble_mri(build_inventory(scan_paths([tmp_path / "src"])[0])[0])
    assert acquisition is not None
    default = analyse_mri(acquisition, MriSettings())
    site_settings = MriSettings(tmax_thresholds_s=(4.0, 8.0))
    site = analyse_mri(acquisition, site_settings)
    assert site.metrics == default.metrics and site.decisions == default.decisions
    assert site.tmax6 is not None and default.tmax6 is not None
    np.testing.assert_array_equal(site.tmax6, default.tmax6)
    four, eight = site.tmax_extra
    assert (four.threshold_s, eight.threshold_s) == (4.0, 8.0)
    assert four.mask.shape == site.core.shape
    # Nested with the published region: Tmax > 4 s holds it, Tmax > 8 s lies inside it.
    assert not (site.tmax6 & ~four.mask).any() and not (eight.mask & ~site.tmax6).any()
    entry = mri_summary(site, acquisition, site_settings).to_json()
    assert entry["tmax_volumes_ml"] == {
        "4": four.volume_ml,
        "6": entry["tmax6_ml"],
        "8": eight.volume_ml,
        "10": entry["tmax10_ml"],
    }
    content = result_content(
        mri_summary(site, acquisition, site_settings), mri_parts(site, acquisition, site_settings)
    )
    assert [r.key for r in content.regions][-2:] == ["tmax4", "tmax8"]
    assert content.regions[-1].definition.startswith("DSC Tmax > 8 s in DWI space")
    assert "Tmax > 4 s" in dict(content.summary.volume_rows)
    names = {p.name for p in write_mri_maps(site, tmp_path / "maps")}
    assert {"tmax4_mask.nii.gz", "tmax8_mask.nii.gz", "pwi_cbf_relative.nii.gz"} <= names
