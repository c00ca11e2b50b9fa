"""Binary DICOM Segmentation of the lesion regions on the source image grid.

The regions overlap (the core lies inside Tmax > 6 s, Tmax > 10 s too), so they are
stored as separate BINARY segments, not as a label map. The analysis runs on a binned
grid; masks are brought back to the source geometry by nearest-neighbour lookup through
both grids' affines (:mod:`strokeflow.report.mask_grid`), so every source pixel takes the
value of the analysis voxel that contains its centre.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from strokeflow.analysis.volume import Geometry
from strokeflow.report.mask_grid import (  # re-exported: the resampling of the SEG's masks
    grid_lookup as grid_lookup,
)
from strokeflow.report.mask_grid import (
    mask_to_grid as mask_to_grid,
)
from strokeflow.report.mask_grid import (
    masks_to_grid as masks_to_grid,
)
from strokeflow.report.mask_grid import packed_slices, segments_overlap

#: Private coding scheme for concepts DICOM has no code for (declared in every object).
PRIVATE_SCHEME = "99STRKFLW"
PRIVATE_SCHEME_NAME = "StrokeFlow private concepts"

#: Largest difference between direction cosines that is rounding noise, not another plane
#: (1e-4 is a 0.006 degree tilt).
ORIENTATION_TOLERANCE = 1e-4

MORPHOLOGICALLY_ALTERED = Code("49755003", "SCT", "Morphologically Altered Structure")


@dataclass(frozen=True)
class Region:
    """One lesion region: a segment of the SEG and a measurement group of the SR.

    Attributes
    ----------
    key : str
        Short identifier (``"core"``, ``"tmax6"``...), also the SR tracking identifier.
    label : str
        Human-readable label, e.g. ``"Ischemic core (rCBF < 30 %)"``.
    mask_zyx : numpy.ndarray
        Bool mask on the analysis grid.
    volume_ml : float
        Volume reported for the region (rounded as in results.json).
    property_type : Code
        Segmented property type / finding type.
    colour_rgb : tuple of int
        Display colour.
    definition : str
        How the region was obtained, e.g. ``"rCBF < 0.3 and Tmax > 6 s"``.
    """

    key: str
    label: str
    mask_zyx: np.ndarray
    volume_ml: float
    property_type: Code
    colour_rgb: tuple[int, int, int]
    definition: str


def sort_along_normal(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Source images ordered along the slice normal (the analysis grid's z order).

    Raises
    ------
    ValueError
        If an image lacks position/orientation or two images share a position.
    """
    if not datasets:
        raise ValueError("no source images given")
    if len(datasets) == 1 and is_enhanced(datasets[0]):
        return list(datasets)  # one multi-frame image: its frames are placed by their groups
    for ds in datasets:
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise ValueError(
                f"source image {ds.get('SOPInstanceUID', '?')} has no "
                "ImagePositionPatient/ImageOrientationPatient"
            )
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    keyed = sorted(datasets, key=lambda d: float(np.dot(normal, d.ImagePositionPatient)))
    positions = [round(float(np.dot(normal, d.ImagePositionPatient)), 3) for d in keyed]
    if len(set(positions)) != len(positions):
        raise ValueError("two source images share a slice position; give one per slice")
    return keyed


def is_enhanced(ds: Dataset) -> bool:
    """Whether an image places its frames by per-frame functional groups."""
    return "PerFrameFunctionalGroupsSequence" in ds


def _group(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    for groups in (
        ds.PerFrameFunctionalGroupsSequence[index],
        ds.get("SharedFunctionalGroupsSequence", [None])[0],
    ):
        if groups is not None and sequence in groups and len(groups[sequence].value):
            item: Dataset = groups[sequence][0]
            return item
    return None


def frame_planes(ds: Dataset) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Per-frame positions ``(n, 3)`` and orientations ``(n, 6)``, and the pixel spacing,
    of an enhanced multi-frame image.

    Raises
    ------
    ValueError
        If a frame has no plane position or orientation.
    """
    positions, orientations = [], []
    spacing: tuple[float, float] | None = None
    for i in range(len(ds.PerFrameFunctionalGroupsSequence)):
        plane = _group(ds, i, "PlanePositionSequence")
        orient = _group(ds, i, "PlaneOrientationSequence")
        measures = _group(ds, i, "PixelMeasuresSequence")
        if plane is None or orient is None or measures is None:
            raise ValueError(f"frame {i + 1} has no plane position, orientation or pixel spacing")
        positions.append([float(v) for v in plane.ImagePositionPatient])
        orientations.append([float(v) for v in orient.ImageOrientationPatient])
        if spacing is None:
            spacing = (float(measures.PixelSpacing[0]), float(measures.PixelSpacing[1]))
    assert spacing is not None
    return np.array(positions), np.array(orientations), spacing


def _shared_frame_orientation(ds: Dataset, mean: list[str]) -> Dataset:
    """A copy of an enhanced image with one shared orientation and pixel measures (what
    DICOM toolkits require of a source), its frames' positions untouched."""
    out = copy.deepcopy(ds)
    measures = _group(out, 0, "PixelMeasuresSequence")
    for frame in out.PerFrameFunctionalGroupsSequence:
        for keyword in ("PlaneOrientationSequence", "PixelMeasuresSequence"):
            if keyword in frame:
                del frame[keyword]
    if "SharedFunctionalGroupsSequence" not in out or not out.SharedFunctionalGroupsSequence:
        out.SharedFunctionalGroupsSequence = [Dataset()]
    shared = out.SharedFunctionalGroupsSequence[0]
    orientation = Dataset()
    orientation.ImageOrientationPatient = mean
    shared.PlaneOrientationSequence = [orientation]
    if measures is not None:
        shared.PixelMeasuresSequence = [measures]
    return out


def shared_orientation(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The images with one ImageOrientationPatient: the series' mean, when they differ only
    by rounding.

    Scanners write the orientation of each slice from its own floating-point sums (GE
    differs in the 8th decimal between slices of one oblique series); DICOM toolkits
    require the orientation of a plane to be shared exactly. Changed images are copies.

    Raises
    ------
    ValueError
        If two orientations differ by more than :data:`ORIENTATION_TOLERANCE` (really
        different planes, which no object can share).
    """
    if not datasets:
        return []
    enhanced = len(datasets) == 1 and is_enhanced(datasets[0])
    if enhanced:
        iops = frame_planes(datasets[0])[1]
    else:
        iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    spread = float(np.max(np.abs(iops - iops[0])))
    if spread == 0.0 and not enhanced:
        return list(datasets)
    if spread > ORIENTATION_TOLERANCE:
        raise ValueError(
            f"source images of different orientations (differing by up to {spread:.2g}); "
            "one plane is needed"
        )
    mean = iops.mean(axis=0)
    row, col = mean[:3] / np.linalg.norm(mean[:3]), mean[3:] / np.linalg.norm(mean[3:])
    text = [f"{v:.10g}" for v in (*row, *col)]
    if enhanced:
        return [_shared_frame_orientation(datasets[0], text)]
    out = []
    for ds in datasets:
        copy_ = copy.deepcopy(ds)
        copy_.ImageOrientationPatient = text
        out.append(copy_)
    return out


def source_geometry(datasets: Sequence[Dataset]) -> Geometry:
    """Affine of the source grid from one image per slice.

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        One image per slice position (any order).

    Returns
    -------
    Geometry
        ``(z, y, x)`` grid with z along the sorted slice positions.
    """
    ordered = sort_along_normal(datasets)
    first = ordered[0]
    if is_enhanced(first):
        return _frames_geometry(first)[0]
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * col_mm  # along a row: next column
    affine[:3, 1] = iop[3:] * row_mm  # along a column: next row
    origin = np.asarray(first.ImagePositionPatient, dtype=float)
    if len(ordered) > 1:
        last = np.asarray(ordered[-1].ImagePositionPatient, dtype=float)
        affine[:3, 2] = (last - origin) / (len(ordered) - 1)
    else:
        thickness = float(first.get("SliceThickness", 1.0) or 1.0)
        affine[:3, 2] = np.cross(iop[:3], iop[3:]) * thickness
    affine[:3, 3] = origin
    return Geometry(affine)


def _frames_geometry(ds: Dataset) -> tuple[Geometry, np.ndarray, np.ndarray]:
    """Grid of an enhanced image's slices (distinct frame positions, sorted along the
    normal), the slice of every frame, and the position ``(n_slices, 3)`` of each slice.

    A frame is on a slice when its position along the normal is within 0.01 mm of it
    (the b-values or time points of one slice share its position).
    """
    positions, orientations, (row_mm, col_mm) = frame_planes(ds)
    iop = orientations.mean(axis=0)
    normal = np.cross(iop[:3], iop[3:])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    new_slice = np.concatenate([[True], np.diff(along[order]) > 0.01])
    slice_of = np.empty(len(order), dtype=np.intp)
    slice_of[order] = np.cumsum(new_slice) - 1
    slice_positions = positions[order[new_slice]]
    n = len(slice_positions)
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * col_mm
    affine[:3, 1] = iop[3:] * row_mm
    thickness = float(ds.get("SliceThickness", 1.0) or 1.0)
    affine[:3, 2] = (
        (slice_positions[-1] - slice_positions[0]) / (n - 1) if n > 1 else normal * thickness
    )
    affine[:3, 3] = slice_positions[0]
    return Geometry(affine), slice_of, slice_positions


def build_segmentation(
    regions: Sequence[Region],
    source_images: Sequence[Dataset],
    analysis_geometry: Geometry,
    *,
    series_description: str,
    series_number: int,
    software_version: str,
    algorithm_name: str = "StrokeFlow",
) -> Dataset:
    """BINARY Segmentation of every region on the grid of ``source_images``.

    Parameters
    ----------
    regions : sequence of Region
        Segments in order (segment number = position + 1).
    source_images : sequence of pydicom.Dataset
        One header per slice of the source series (pixels not needed).
    analysis_geometry : Geometry
        Grid of the regions' masks.
    series_description, series_number : str, int
        Of the new series.
    software_version : str
        Written to SoftwareVersions and the algorithm identification.

    Returns
    -------
    pydicom.Dataset
        A highdicom Segmentation, same study and frame of reference as the source.
    """
    ordered = shared_orientation(sort_along_normal(source_images))
    plane_positions = None
    if is_enhanced(ordered[0]):
        target, frame_slice, slice_positions = _frames_geometry(ordered[0])
        shape = (len(slice_positions), int(ordered[0].Rows), int(ordered[0].Columns))
        # The SEG's planes: one per source frame, on that frame's slice...
        plane_slice, plane_mm = frame_slice, frame_planes(ordered[0])[0]
        if len(slice_positions) < len(frame_slice):
            # ...but one per slice where several frames share one (b-values, time
            # points), placed explicitly.
            plane_positions = [
                hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, tuple(p))
                for p in slice_positions
            ]
            plane_slice, plane_mm = np.arange(len(slice_positions)), slice_positions
    else:
        target = source_geometry(ordered)
        shape = (len(ordered), int(ordered[0].Rows), int(ordered[0].Columns))
        plane_slice = np.arange(len(ordered))
        plane_mm = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in ordered])
    packed = packed_slices([r.mask_zyx for r in regions], analysis_geometry, target, shape)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name,
        version=software_version,
        family=Code("123109", "DCM", "Automatic"),
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k + 1,
            segment_label=region.label[:64],
            segmented_property_category=MORPHOLOGICALLY_ALTERED,
            segmented_property_type=region.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=generate_uid(),
            tracking_id=region.key,
            anatomic_regions=[Code("12738006", "SCT", "Brain")],
            display_color=hd.color.CIELabColor.from_rgb(*region.colour_rgb),
        )
        for k, region in enumerate(regions)
    ]
    # highdicom builds every frame's functional groups from an empty pixel array of the
    # right shape (nothing in them depends on the pixels, as every frame is kept), which
    # spares it the overlap check and the encoding of the real pixels: a sum over the
    # segments of every source pixel (80 x 512 x 512 x 4 for a thin-slice study, 0.1 to
    # 0.5 s) and one frame at a time. The pixels and the overlap are then set from the
    # packed masks: the same bytes and value as highdicom gives for the real array.
    empty = np.broadcast_to(np.zeros((), np.uint8), (len(plane_slice), *shape[1:], len(regions)))
    seg = hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=empty,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="StrokeFlow",
        manufacturer_model_name="StrokeFlow",
        software_versions=software_version,
        device_serial_number="0",
        content_description="Perfusion lesion regions",
        content_label="LESIONS",
        series_description=series_description,
        omit_empty_frames=False,
        plane_positions=plane_positions,
    )
    segments, planes = _frame_planes(seg, plane_mm)
    seg.PixelData = _binary_pixel_data(packed, segments, plane_slice[planes], shape[1] * shape[2])
    seg.SegmentsOverlap = "YES" if segments_overlap(packed) else "NO"
    seg.BodyPartExamined = "HEAD"
    return seg


#: Largest distance (mm) between a SEG frame's position and the plane it is taken for.
_PLANE_MATCH_MM = 1e-3


def _frame_planes(seg: Dataset, plane_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment index and plane index of every frame of a built SEG, in frame order.

    Read back from the frames' functional groups, so the pixels follow whatever frame
    order highdicom chose; a plane is found by its position (``plane_mm``, ``(n, 3)``,
    of the pixel array's planes, all distinct).
    """
    frames = seg.PerFrameFunctionalGroupsSequence
    shared = seg.SharedFunctionalGroupsSequence[0]  # holds the segment when there is one
    segments = np.array(
        [
            int(
                (f if "SegmentIdentificationSequence" in f else shared)
                .SegmentIdentificationSequence[0]
                .ReferencedSegmentNumber
            )
            - 1
            for f in frames
        ]
    )
    positions = np.array(
        [[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] for f in frames]
    )
    distance = np.linalg.norm(positions[:, None, :] - plane_mm[None, :, :], axis=-1)
    planes = np.argmin(distance, axis=1)
    if np.any(distance[np.arange(len(frames)), planes] > _PLANE_MATCH_MM):
        raise ValueError("a SEG frame is at no position of the source planes")
    return segments, planes


def _binary_pixel_data(
    packed: np.ndarray, segments: np.ndarray, slices: np.ndarray, pixels_per_frame: int
) -> bytes:
    """PixelData of 1-bit frames (segment ``segments[i]`` of slice ``slices[i]`` of
    :func:`~strokeflow.report.mask_grid.packed_slices`' ``packed``), packed end to end as
    DICOM packs them: no padding between frames, one byte at the end to an even length."""
    frames = packed[segments, slices]  # (frames, bytes per frame)
    if pixels_per_frame % 8:
        # Frames do not end on a byte: the bit stream runs on across them.
        bits = np.unpackbits(frames, axis=-1, count=pixels_per_frame, bitorder="little")
        frames = np.packbits(bits.ravel(), bitorder="little")
    data = frames.tobytes()
    # highdicom's padding byte (an ASCII "0"), kept so that the object is the one it gives.
    return data + b"0" if len(data) % 2 else data
