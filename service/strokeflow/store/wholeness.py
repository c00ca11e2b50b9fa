"""Whether a received series is known to be whole, from the counts its vendor filled in.

A study normally completes after a quiet period (:mod:`strokeflow.store.studies`): the
receiver cannot tell that a sender is done. Many acquisitions say how many images they
hold, though, and then waiting adds nothing once the sender has released:

* Number of Series Related Instances (0020,1209): the series holds that many;
* Number of Temporal Positions (0020,0105) ``T``: every slice position holds ``T``
  images, one per Temporal Position Identifier (0020,0100) where that is filled;
* Images in Acquisition (0020,1002) ``N``: every acquisition (Acquisition Number) holds
  ``N`` images; on its own it says the series is whole only when the series is one
  acquisition (with ``T``, ``N`` must agree with it).

A count must be the same in every image of the series, and the images must agree with
it: a slice with fewer frames than ``T`` says the series is *incomplete*; counts that
disagree with each other say nothing (*unknown*), and the quiet period decides.
"""

from __future__ import annotations

import enum
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from strokeflow.store import header_values

LOG = logging.getLogger(__name__)

#: The header elements :func:`read_counts` parses (nothing else).
_TAGS = [
    "NumberOfTemporalPositions",
    "TemporalPositionIdentifier",
    "ImagesInAcquisition",
    "AcquisitionNumber",
    "ImagePositionPatient",
    "SliceLocation",
    "InstanceNumber",
    "NumberOfFrames",
]
#: Slice positions equal to this many decimals (of a mm) are the same slice.
_POSITION_DECIMALS = 2


class Wholeness(enum.Enum):
    """What a series' own counts say about it."""

    WHOLE = "whole"
    INCOMPLETE = "incomplete"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ImageCounts:
    """The counting elements of one stored image (``None``: absent or unreadable)."""

    temporal_positions: int | None = None
    temporal_position: int | None = None
    images_in_acquisition: int | None = None
    acquisition_number: int | None = None
    #: Slice position (mm): Image Position (Patient) rounded, else Slice Location.
    slice_key: tuple[float, ...] | None = None
    frames: int = 1


#: PostgreSQL INTEGER: a count outside it is no count (and must not fail the row's insert).
_INT_RANGE = range(-(2**31), 2**31)


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    number = header_values.integer(ds, keyword)
    return number if number is None or number in _INT_RANGE else None


def _slice_key(ds: pydicom.Dataset) -> tuple[float, ...] | None:
    def rounded(values: Iterable[float]) -> tuple[float, ...]:
        return tuple(round(v, _POSITION_DECIMALS) for v in values)

    try:
        position = header_values.decimals(ds, "ImagePositionPatient")
        if position is not None and len(position) == 3:
            return rounded(position)
        if position is not None and len(position) == 1:
            return None  # as when pydicom gave one DSfloat (no len()): no key
        location = header_values.decimals(ds, "SliceLocation")
        if location is not None and len(location) == 1:
            return rounded(location)
    except (TypeError, ValueError, OverflowError):
        pass
    return None


def image_counts(ds: pydicom.Dataset) -> ImageCounts:
    """The counting elements of a parsed dataset (the receiver records them in the
    instance's row, so that the completion sweep opens no file).

    Parameters
    ----------
    ds : pydicom.Dataset
        The instance's header (pixel data not needed); values that are absent, empty or not
        numbers count as absent.

    Returns
    -------
    ImageCounts
    """
    return ImageCounts(
        temporal_positions=_int(ds, "NumberOfTemporalPositions"),
        temporal_position=_int(ds, "TemporalPositionIdentifier"),
        images_in_acquisition=_int(ds, "ImagesInAcquisition"),
        acquisition_number=_int(ds, "AcquisitionNumber"),
        slice_key=_slice_key(ds),
        frames=_int(ds, "NumberOfFrames") or 1,
    )


def read_counts(path: Path) -> ImageCounts | None:
    """The counting elements of the file at ``path``; ``None`` if it cannot be read.

    Only for instances indexed before their rows held the counts (see
    :func:`image_counts`): the header's counting elements are parsed, nothing else.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        LOG.debug("counts of %s not read: %s", path, exc)
        return None
    return image_counts(ds)


def slice_key_text(key: tuple[float, ...] | None) -> str | None:
    """A slice key as the text an instance row stores (exact: floats by their repr)."""
    return None if key is None else ",".join(repr(v) for v in key)


def parse_slice_key(text: str | None) -> tuple[float, ...] | None:
    """The slice key that :func:`slice_key_text` wrote."""
    return None if text is None else tuple(float(v) for v in text.split(","))


def _consistent(values: list[int | None]) -> int | None:
    """The one positive value every image carries, else ``None``."""
    distinct = set(values)
    if len(distinct) != 1:
        return None
    (value,) = distinct
    return value if value is not None and value > 0 else None


def _by_temporal_positions(images: list[ImageCounts], positions: int) -> Wholeness:
    by_slice: dict[tuple[float, ...], list[ImageCounts]] = defaultdict(list)
    for image in images:
        if image.slice_key is None:
            return Wholeness.UNKNOWN
        by_slice[image.slice_key].append(image)
    for slice_images in by_slice.values():
        ids = [i.temporal_position for i in slice_images]
        if all(t is not None for t in ids):
            seen = set(ids)
            if any(t < 1 or t > positions for t in seen):  # type: ignore[operator]
                return Wholeness.UNKNOWN
            if len(seen) < positions:
                return Wholeness.INCOMPLETE
        elif len(slice_images) < positions:
            return Wholeness.INCOMPLETE
        elif len(slice_images) > positions:
            return Wholeness.UNKNOWN
    return Wholeness.WHOLE


def _by_images_in_acquisition(images: list[ImageCounts], per_acquisition: int) -> Wholeness:
    by_acquisition: dict[int | None, int] = defaultdict(int)
    for image in images:
        by_acquisition[image.acquisition_number] += 1
    counts = list(by_acquisition.values())
    if any(c > per_acquisition for c in counts):
        return Wholeness.UNKNOWN
    if any(c < per_acquisition for c in counts):
        return Wholeness.INCOMPLETE
    # Every acquisition present is whole; only a series of one says none is missing.
    return Wholeness.WHOLE if len(counts) == 1 else Wholeness.UNKNOWN


def series_wholeness(
    images: list[ImageCounts | None], expected_instances: int | None = None
) -> Wholeness:
    """What the counts of a series' stored images say about the series.

    Parameters
    ----------
    images : list of ImageCounts or None
        One per stored instance (``None``: its header could not be read).
    expected_instances : int, optional
        Number of Series Related Instances, as the receiver recorded it.

    Returns
    -------
    Wholeness
    """
    if expected_instances:
        return Wholeness.WHOLE if len(images) >= expected_instances else Wholeness.INCOMPLETE
    read = [i for i in images if i is not None]
    if not read or len(read) < len(images) or any(i.frames > 1 for i in read):
        # Multi-frame objects carry their own frames; a whole one needs no counting.
        return Wholeness.UNKNOWN
    positions = _consistent([i.temporal_positions for i in read])
    per_acquisition = _consistent([i.images_in_acquisition for i in read])
    if positions is not None:
        verdict = _by_temporal_positions(read, positions)
        if (
            verdict is Wholeness.WHOLE
            and per_acquisition is not None
            and not _agrees(read, per_acquisition, positions)
        ):
            return Wholeness.UNKNOWN
        return verdict
    if per_acquisition is not None:
        return _by_images_in_acquisition(read, per_acquisition)
    return Wholeness.UNKNOWN


def _agrees(images: list[ImageCounts], per_acquisition: int, positions: int) -> bool:
    """Whether Images in Acquisition agrees with a series whole by its temporal positions:
    it counts the whole series, or each of the ``positions`` acquisitions."""
    if per_acquisition == len(images):
        return True
    counts: dict[int | None, int] = defaultdict(int)
    for image in images:
        counts[image.acquisition_number] += 1
    return len(counts) == positions and all(c == per_acquisition for c in counts.values())


def study_wholeness(series: Iterable[Wholeness]) -> Wholeness:
    """A study is whole when at least one series is and none says it is incomplete.

    Series without counts (a localizer, a dose report) say nothing either way.
    """
    verdicts = set(series)
    if Wholeness.INCOMPLETE in verdicts:
        return Wholeness.INCOMPLETE
    return Wholeness.WHOLE if Wholeness.WHOLE in verdicts else Wholeness.UNKNOWN
