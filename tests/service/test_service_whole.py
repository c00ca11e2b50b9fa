"""A study whose own counts say it is whole completes without the quiet period."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.receive.index import instance_record
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.migrate import alembic_config, upgrade_to_head
from strokeflow.store.models import Instance
from strokeflow.store.repository import get_study
from strokeflow.store.studies import CompletionRules, mark_released, note_instance, sweep
from strokeflow.store.wholeness import ImageCounts, Wholeness, series_wholeness, study_wholeness

T0 = datetime(2024, 1, 2, 10, 0, 0, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.10.7"


def counts(z: float, t: int | None, positions: int | None = 3, **kw: int) -> ImageCounts:
    return ImageCounts(
        temporal_positions=positions, temporal_position=t, slice_key=(0.0, 0.0, z), **kw
    )


def grid(slices: int, frames: int, positions: int | None = 3, **kw: int) -> list[ImageCounts]:
    return [counts(5.0 * z, t + 1, positions, **kw) for t in range(frames) for z in range(slices)]


def test_every_slice_with_every_temporal_position_is_whole() -> None:
    assert series_wholeness(list(grid(4, 3))) is Wholeness.WHOLE


def test_a_slice_short_of_a_temporal_position_is_incomplete() -> None:
    images = list(grid(4, 3))
    images.pop()  # the last slice of the last time point
    assert series_wholeness(list(images)) is Wholeness.INCOMPLETE
    assert series_wholeness(list(grid(4, 2))) is Wholeness.INCOMPLETE


def test_temporal_positions_counted_per_slice_without_identifiers() -> None:
    whole = [counts(5.0 * z, None) for _ in range(3) for z in range(2)]
    assert series_wholeness(list(whole)) is Wholeness.WHOLE
    assert series_wholeness(list(whole[:-1])) is Wholeness.INCOMPLETE


def test_counts_that_disagree_say_nothing() -> None:
    mixed = [*grid(2, 3), counts(20.0, 1, positions=4)]
    assert series_wholeness(list(mixed)) is Wholeness.UNKNOWN
    assert series_wholeness(list(grid(2, 3, positions=None))) is Wholeness.UNKNOWN
    # Images in Acquisition that counts neither the series nor a time point's acquisition.
    assert series_wholeness(list(grid(2, 3, images_in_acquisition=5))) is Wholeness.UNKNOWN
    assert series_wholeness([*grid(2, 3), None]) is Wholeness.UNKNOWN


def test_images_in_acquisition() -> None:
    one = [ImageCounts(images_in_acquisition=4, acquisition_number=1) for _ in range(4)]
    assert series_wholeness(list(one)) is Wholeness.WHOLE
    assert series_wholeness(list(one[:3])) is Wholeness.INCOMPLETE
    # Per time point, with the number of time points: whole.
    per_time = [
        ImageCounts(3, t + 1, 2, t + 1, (0.0, 0.0, 5.0 * z)) for t in range(3) for z in range(2)
    ]
    assert series_wholeness(list(per_time)) is Wholeness.WHOLE
    # Per time point without it: no telling how many acquisitions are to come.
    alone = [
        ImageCounts(None, None, 2, t + 1, (0.0, 0.0, 5.0 * z)) for t in range(3) for z in (0, 1)
    ]
    assert series_wholeness(list(alone)) is Wholeness.UNKNOWN


def test_series_related_instances_and_studies() -> None:
    blank: list[ImageCounts | None] = [ImageCounts() for _ in range(3)]
    assert series_wholeness(blank, expected_instances=3) is Wholeness.WHOLE
    assert series_wholeness(blank, expected_instances=4) is Wholeness.INCOMPLETE
    unknown, whole, short = Wholeness.UNKNOWN, Wholeness.WHOLE, Wholeness.INCOMPLETE
    assert study_wholeness([unknown, whole]) is Wholeness.WHOLE  # a localizer says nothing
    assert study_wholeness([whole, short]) is Wholeness.INCOMPLETE
    assert study_wholeness([unknown]) is Wholeness.UNKNOWN


def write_image(path: Path, series: str, sop: str, z: float, t: int, positions: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, series
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.TemporalPositionIdentifier = t
    ds.NumberOfTemporalPositions = positions
    ds.AcquisitionNumber = t
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def receive_series(
    sessions: sessionmaker[Session],
    data_dir: Path,
    series: str,
    *,
    slices: int,
    frames: int,
    positions: int,
    at: datetime,
    recorded: bool = True,
) -> None:
    """Store and index the images, as the receiver does (``recorded=False``: rows without
    the counts, as indexed before revision 0007)."""
    with sessions() as session, session.begin():
        for t in range(1, frames + 1):
            for z in range(slices):
                sop = f"{series}.{t}.{z}"
                rel = Path(f"studies/{STUDY}/{series}/{sop}.dcm")
                ds = write_image(data_dir / rel, series, sop, 5.0 * z, t, positions)
                record = instance_record(
                    ds,
                    transfer_syntax_uid=ExplicitVRLittleEndian,
                    relpath=rel,
                    size_bytes=(data_dir / rel).stat().st_size,
                    sha256=f"{sop:0>64}"[-64:],
                    calling_ae_title="CT01",
                )
                if not recorded:
                    record = dataclasses.replace(record, counts=None)
                note_instance(session, record, at)


def release_and_sweep(
    sessions: sessionmaker[Session], rules: CompletionRules, at: datetime, release: bool = True
) -> list[int]:
    with sessions() as session, session.begin():
        if release:
            mark_released(session, [STUDY], at)
        return [job.version for job in sweep(session, rules, at + timedelta(seconds=0.2))]


def completion(sessions: sessionmaker[Session]) -> str | None:
    with sessions() as session:
        study = get_study(session, STUDY)
        assert study is not None
        return study.completion_reason


@pytest.fixture
def rules(tmp_path: Path) -> CompletionRules:
    return CompletionRules(quiet_period_s=10.0, quiet_timeout_s=300.0, data_dir=tmp_path)


def test_a_whole_acquisition_completes_at_its_release(
    sessions: sessionmaker[Session], rules: CompletionRules, tmp_path: Path
) -> None:
    receive_series(sessions, tmp_path, f"{STUDY}.3", slices=3, frames=4, positions=4, at=T0)
    # Still sending (no release): it waits, whole or not.
    assert release_and_sweep(sessions, rules, T0, release=False) == []
    assert release_and_sweep(sessions, rules, T0) == [1]
    assert completion(sessions) == "acquisition_whole"


def test_an_acquisition_short_of_its_count_waits_for_the_quiet_period(
    sessions: sessionmaker[Session], rules: CompletionRules, tmp_path: Path
) -> None:
    receive_series(sessions, tmp_path, f"{STUDY}.3", slices=3, frames=3, positions=4, at=T0)
    assert release_and_sweep(sessions, rules, T0) == []
    with sessions() as session, session.begin():
        assert sweep(session, rules, T0 + timedelta(seconds=9)) == []
        versions = [j.version for j in sweep(session, rules, T0 + timedelta(seconds=10))]
    assert versions == [1]
    assert completion(sessions) == "quiet_period"


def test_without_the_data_directory_the_quiet_period_decides(
    sessions: sessionmaker[Session], rules: CompletionRules, tmp_path: Path
) -> None:
    receive_series(sessions, tmp_path, f"{STUDY}.3", slices=2, frames=2, positions=2, at=T0)
    plain = CompletionRules(quiet_period_s=10.0, quiet_timeout_s=300.0)
    assert release_and_sweep(sessions, plain, T0) == []


def test_a_series_after_an_early_completion_makes_the_next_version(
    sessions: sessionmaker[Session], rules: CompletionRules, tmp_path: Path
) -> None:
    receive_series(sessions, tmp_path, f"{STUDY}.3", slices=2, frames=3, positions=3, at=T0)
    assert release_and_sweep(sessions, rules, T0) == [1]
    later = T0 + timedelta(seconds=2)
    # A second perfusion series on a later association, sent in part: the study reopens
    # and waits for it (its count says it is short), then completes as version 2.
    receive_series(sessions, tmp_path, f"{STUDY}.4", slices=2, frames=1, positions=3, at=later)
    assert release_and_sweep(sessions, rules, later) == []
    receive_series(sessions, tmp_path, f"{STUDY}.4", slices=2, frames=3, positions=3, at=later)
    assert release_and_sweep(sessions, rules, later) == [2]
    assert completion(sessions) == "acquisition_whole"


def unrecorded_rows(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        missing = select(func.count()).where(Instance.number_of_frames.is_(None))
        return int(session.scalar(missing) or 0)


def test_the_sweep_decides_from_the_rows_without_opening_the_files(
    sessions: sessionmaker[Session], rules: CompletionRules, tmp_path: Path
) -> None:
    receive_series(sessions, tmp_path, f"{STUDY}.3", slices=3, frames=4, positions=4, at=T0)
    receive_series(sessions, tmp_path, f"{STUDY}.4", slices=2, frames=2, positions=3, at=T0)
    with sessions() as session:
        counts = session.execute(
            select(
                Instance.temporal_positions, Instance.slice_key, Instance.number_of_frames
            ).where(Instance.sop_instance_uid == f"{STUDY}.3.2.1")
        ).one()
    assert tuple(counts) == (4, "0.0,0.0,5.0", 1)
    shutil.rmtree(tmp_path / "studies")  # what the sweep decides now, the rows alone say
    # Series .4 is short of its third temporal position: the study waits.
    assert release_and_sweep(sessions, rules, T0) == []
    receive_series(sessions, tmp_path, f"{STUDY}.4", slices=2, frames=3, positions=3, at=T0)
    shutil.rmtree(tmp_path / "studies")
    assert release_and_sweep(sessions, rules, T0) == [1]
    assert completion(sessions) == "acquisition_whole"


def test_rows_without_counts_have_each_header_read_once(
    sessions: sessionmaker[Session], rules: CompletionRules, tmp_path: Path
) -> None:
    series = f"{STUDY}.3"
    receive_series(
        sessions, tmp_path, series, slices=2, frames=2, positions=3, at=T0, recorded=False
    )
    assert unrecorded_rows(sessions) == 4
    assert release_and_sweep(sessions, rules, T0) == []  # read: short of a temporal position
    assert unrecorded_rows(sessions) == 0  # and recorded in the rows
    shutil.rmtree(tmp_path / "studies")
    # The third time point, also without counts in its rows: only its files are read.
    receive_series(
        sessions, tmp_path, series, slices=2, frames=3, positions=3, at=T0, recorded=False
    )
    for t in (1, 2):
        for z in (0, 1):
            (tmp_path / f"studies/{STUDY}/{series}/{series}.{t}.{z}.dcm").unlink()
    assert release_and_sweep(sessions, rules, T0) == [1]
    assert completion(sessions) == "acquisition_whole"


def test_rows_indexed_before_revision_0007_still_complete_when_whole(
    database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(database_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    receive_series(sessions, tmp_path, f"{STUDY}.3", slices=2, frames=3, positions=3, at=T0)
    config = alembic_config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
    assert "slice_key" not in {c["name"] for c in inspect(engine).get_columns("instances")}
    upgrade_to_head(engine)  # the rows are kept, their counts empty
    assert unrecorded_rows(sessions) == 6
    rules = CompletionRules(quiet_period_s=10.0, quiet_timeout_s=300.0, data_dir=tmp_path)
    assert release_and_sweep(sessions, rules, T0) == [1]
    assert completion(sessions) == "acquisition_whole"
    assert unrecorded_rows(sessions) == 0
    engine.dispose()
