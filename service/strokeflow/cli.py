"""The ``strokeflow`` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from strokeflow import __version__
from strokeflow.clihelp import show_flags_without_metavar
from strokeflow.logsetup import configure_logging
from strokeflow.settings_env import ENV_PREFIX

if TYPE_CHECKING:
    from strokeflow.analysis.mri import MriSettings
    from strokeflow.analysis.settings import CtpSettings
    from strokeflow.report.summary import AnalysisSummary

# Set before numpy is first imported (nothing above imports it; a test holds that).
# The analysis runs its own threads over voxels and slices, numpy releasing the GIL;
# OpenBLAS threads on top of them busy-wait between the deconvolution's many mid-size
# products and take the cores from those threads and from the receiver: its residue
# tables took 1.5 s instead of 0.1 s on a loaded 2-core machine. A value set by the
# user is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

show_flags_without_metavar()

app = typer.Typer(
    help="StrokeFlow: CT/MR perfusion analysis for acute stroke (decision support, not a "
    "cleared medical device).",
    no_args_is_help=True,
    add_completion=False,
)
phantom_app = typer.Typer(help="Write synthetic studies with known truth.", no_args_is_help=True)
app.add_typer(phantom_app, name="phantom")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def _fmt(value: object, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"


def _analysis_line(summary: AnalysisSummary) -> str:
    """One analysis in a line: core, every Tmax volume by its threshold, mismatch, DEFUSE 3."""
    quality = "ok" if summary.quality_ok else "NOT OK - check the images"
    defuse3 = summary.decisions.get("defuse3")
    tmax = ", ".join(f"Tmax>{t.threshold_s:g}s {_fmt(t.volume_ml, ' mL')}" for t in summary.tmax)
    return (
        f"{summary.study_instance_uid} [{summary.kind}]: core {_fmt(summary.core_ml, ' mL')}, "
        f"{tmax}, mismatch {_fmt(summary.mismatch_ml, ' mL')} "
        f"(ratio {_fmt(summary.mismatch_ratio)}), "
        f"DEFUSE 3 {'n/a' if defuse3 is None else ('YES' if defuse3 else 'no')}; "
        f"quality {quality}"
    )


def analysis_settings(config: Path | None) -> tuple[CtpSettings, MriSettings]:
    """The CT and MR analysis settings of the configuration, for ``strokeflow analyze``.

    With neither a file nor any ``STROKEFLOW_*`` environment variable the configuration
    is the defaults, and so are these: they are built without the service's settings
    model (pydantic and pydantic-settings, ~0.1 s of imports of a 3.4 s analysis).
    Otherwise :func:`strokeflow.config.load_settings` reads and validates the whole
    configuration, as every other command does.

    Parameters
    ----------
    config : Path, optional
        The ``--config`` TOML file.

    Returns
    -------
    tuple of CtpSettings and MriSettings

    Raises
    ------
    ValueError
        An invalid configuration (from :func:`~strokeflow.config.load_settings`).
    """
    from strokeflow.analysis.mri import MriSettings
    from strokeflow.analysis.settings import CtpSettings

    configured = config is not None or any(
        name.upper().startswith(ENV_PREFIX) for name in os.environ
    )
    if not configured:
        return CtpSettings(), MriSettings()
    from strokeflow.config import load_settings

    analysis = load_settings(config).analysis
    return analysis.ctp, analysis.mri


@app.command()
def analyze(
    inputs: Annotated[list[Path], typer.Argument(help="DICOM files or folders, any order.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    core_rcbf: Annotated[
        float | None,
        typer.Option(
            help="CT core threshold: relative CBF below this fraction "
            "(default: analysis.ctp.core_rcbf_threshold of the configuration, 0.30).",
            show_default=False,
        ),
    ] = None,
    core_adc: Annotated[
        float | None,
        typer.Option(
            help="MR core threshold: ADC below this, in 1e-6 mm2/s "
            "(default: analysis.mri.adc_core_threshold_um2_s of the configuration, 620).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML configuration file (else $STROKEFLOW_CONFIG)."),
    ] = None,
    no_maps: Annotated[bool, typer.Option("--no-maps", help="Skip the NIfTI maps.")] = False,
    no_dicom: Annotated[
        bool, typer.Option("--no-dicom", help="Skip the DICOM result objects (SC, SR, SEG).")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Analyse CT perfusion and MR stroke studies; write OUT/results.json, maps and DICOM.

    Exits 1 when nothing could be analysed or when the analysis of any acquisition failed
    (each failure is an entry of ``errors`` and ``failures`` in results.json).
    """
    from dataclasses import replace

    from strokeflow.analyze import AnalyzeOptions, NothingToAnalyseError, analyze_paths

    configure_logging(verbose=verbose)
    for path in inputs:
        if not path.exists():
            typer.echo(f"error: {path} does not exist", err=True)
            raise typer.Exit(2)
    try:
        ctp, mri = analysis_settings(config)
    except ValueError as exc:
        typer.echo(f"error: configuration: {exc}", err=True)
        raise typer.Exit(2) from exc
    if core_rcbf is not None:
        ctp = replace(ctp, core_rcbf_threshold=core_rcbf)
    if core_adc is not None:
        mri = replace(mri, adc_core_threshold_um2_s=core_adc)
    options = AnalyzeOptions(
        ctp=ctp,
        mri=mri,
        write_maps=not no_maps,
        write_dicom=not no_dicom,
    )
    try:
        outcome = analyze_paths(list(inputs), out, options)
    except (NothingToAnalyseError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    for study in outcome.results["studies"]:
        uid = study["study_instance_uid"]
        for summary in (s for s in outcome.summaries if s.study_instance_uid == uid):
            typer.echo(_analysis_line(summary))
            for flag in summary.flags:
                typer.echo(f"  [{flag.severity}] {flag.message}")
        for error in study["errors"]:
            typer.echo(f"  error: {error}", err=True)
    for p in outcome.results["problems"]:
        typer.echo(f"skipped {p['path']}: {p['reason']}", err=True)
    typer.echo(f"wrote {outcome.results_path}")
    if any(study["errors"] for study in outcome.results["studies"]):
        raise typer.Exit(1)


@phantom_app.command("ctp")
def phantom_ctp(
    out: Annotated[Path, typer.Argument(help="Folder to write the study and truth.json into.")],
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same study).")] = 0,
    matrix: Annotated[int, typer.Option(help="In-plane pixels.")] = 128,
    slices: Annotated[int, typer.Option(help="Number of 5 mm slices.")] = 8,
    frames: Annotated[int, typer.Option(help="Number of time frames.")] = 40,
    lesion: Annotated[str, typer.Option(help="none, standard, large or malignant.")] = "standard",
    side: Annotated[str, typer.Option(help="Lesion side: left or right.")] = "left",
    noise_hu: Annotated[
        float | None, typer.Option(help="Noise sigma in HU (default: realistic low dose).")
    ] = None,
    motion: Annotated[str, typer.Option(help="none, moderate or severe.")] = "none",
    timing: Annotated[str, typer.Option(help="regular or irregular.")] = "regular",
    duration_s: Annotated[
        float | None, typer.Option(help="Stop the scan early (truncated bolus).")
    ] = None,
    transfer_syntax: Annotated[
        str, typer.Option(help="explicit, implicit, rle, jpegls or jpeg2000.")
    ] = "explicit",
    split_series: Annotated[int, typer.Option(help="Split the perfusion over N series.")] = 1,
) -> None:
    """Write a synthetic CT perfusion study with its truth."""
    from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
    from strokeflow.phantom.ctp_dicom import write_ctp_study

    choices: dict[str, tuple[str, ...]] = {
        "lesion": ("none", "standard", "large", "malignant"),
        "side": ("left", "right"),
        "motion": ("none", "moderate", "severe"),
        "timing": ("regular", "irregular"),
        "transfer_syntax": ("explicit", "implicit", "rle", "jpegls", "jpeg2000"),
    }
    given = {
        "lesion": lesion,
        "side": side,
        "motion": motion,
        "timing": timing,
        "transfer_syntax": transfer_syntax,
    }
    for name, value in given.items():
        if value not in choices[name]:
            typer.echo(
                f"error: --{name.replace('_', '-')} must be one of {choices[name]}", err=True
            )
            raise typer.Exit(2)
    options = CtpPhantomOptions(
        seed=seed,
        matrix=matrix,
        slices=slices,
        frames=frames,
        lesion=lesion,  # type: ignore[arg-type]
        lesion_side=side,  # type: ignore[arg-type]
        noise_hu=noise_hu,
        motion=motion,  # type: ignore[arg-type]
        timing=timing,  # type: ignore[arg-type]
        scan_duration_s=duration_s,
    )
    phantom = simulate_ctp(options)
    ts: Literal["explicit", "implicit", "rle", "jpegls", "jpeg2000"] = transfer_syntax  # type: ignore[assignment]
    paths = write_ctp_study(phantom, out, transfer_syntax=ts, split_series=split_series)
    truth = phantom.truth
    typer.echo(
        f"wrote {len(paths)} files to {out}; truth: core {truth['core_ml']:.1f} mL, "
        f"Tmax>6s {truth['tmax6_ml']:.1f} mL, decisions {json.dumps(truth['decisions'])}"
    )


@phantom_app.command("mri")
def phantom_mri(
    out: Annotated[Path, typer.Argument(help="Folder to write the study and truth.json into.")],
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same study).")] = 0,
    lesion: Annotated[str, typer.Option(help="none, standard, large or malignant.")] = "standard",
    side: Annotated[str, typer.Option(help="Lesion side: left or right.")] = "left",
    adc_map: Annotated[bool, typer.Option(help="Include the scanner's ADC map.")] = True,
    perfusion: Annotated[bool, typer.Option(help="Include the DSC perfusion series.")] = True,
    dwi_matrix: Annotated[int, typer.Option(help="DWI in-plane pixels.")] = 256,
    pwi_matrix: Annotated[int, typer.Option(help="DSC in-plane pixels.")] = 128,
    slices: Annotated[int, typer.Option(help="Number of 5 mm slices.")] = 20,
    frames: Annotated[int, typer.Option(help="DSC time points.")] = 60,
    vendor: Annotated[
        str, typer.Option(help="Where b-values go: standard, siemens, ge or philips.")
    ] = "standard",
) -> None:
    """Write a synthetic MR stroke study (DWI, ADC, DSC) with its truth."""
    from strokeflow.phantom.mri_dicom import write_mri_phantom_cli

    try:
        line = write_mri_phantom_cli(
            out,
            seed=seed,
            lesion=lesion,
            side=side,
            adc_map=adc_map,
            perfusion=perfusion,
            dwi_matrix=dwi_matrix,
            pwi_matrix=pwi_matrix,
            slices=slices,
            frames=frames,
            vendor=vendor,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(line)


#: The commands of this module. A command line that names one of them runs without the
#: service and web commands mounted (their modules import the service's configuration
#: model, pydantic and the web stack); any other (``--help`` included) mounts them all.
OWN_COMMANDS = frozenset({"analyze", "phantom", "version"})


def main() -> None:
    """Console-script entry point."""
    from strokeflow.process_tuning import skip_final_collection

    # The process ends with the command: its last garbage collection is skipped (~0.3 s).
    skip_final_collection()
    if len(sys.argv) < 2 or sys.argv[1] not in OWN_COMMANDS:
        from strokeflow.service_cli import register as register_service
        from strokeflow.web.cli import register as register_web

        register_service(app)
        register_web(app)
    app()
