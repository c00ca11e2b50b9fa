"""Binary DICOM Segmentation of the lesion regions on the source image grid.

The regions overlap (the core lies inside Tmax > 6 s, Tmax > 10 s too), so they are
stored as separate BINARY segments, not as a label map. The analysis runs on a binned
grid; masks are brought back to the source geometry by nearest-neighbour lookup through
both grids' affines, so every source pixel takes the value of the analysis voxel that
contains its centre.
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


def grid_lookup(
    mask_geometry: Geometry,
    mask_shape: tuple[int, ...],
    target: Geometry,
    target_shape: tuple[int, ...],
) -> np.ndarray:
    """Flat index of the mask voxel containing each target voxel's centre.

    Parameters
    ----------
    mask_geometry, target : Geometry
        Source and target grids.
    mask_shape, target_shape : tuple of int
        ``(z, y, x)`` of the two grids.

    Returns
    -------
    numpy.ndarray
        ``target_shape`` int64 indices into the flattened mask; -1 outside its grid.
    """
    # index_mask(xyz) = inv(A_mask) @ A_target @ index_target(xyz). Rounded by hand, not
    # with scipy's affine_transform: its "constant" mode drops target pixels whose centre
    # maps less than half a voxel outside the edge centres, i.e. the outer fine pixels of
    # each binned edge voxel.
    m = np.linalg.inv(mask_geometry.affine_lps) @ target.affine_lps
    nz, ny, nx = target_shape
    sz, sy, sx = mask_shape
    axis_aligned = np.allclose(m[:3, :3] - np.diag(np.diag(m[:3, :3])), 0.0, atol=1e-9)
    if axis_aligned:
        # The usual case (same orientation, binned in-plane): one index per row, column
        # and slice instead of one per voxel.
        ix = np.floor(m[0, 0] * np.arange(nx) + m[0, 3] + 0.5).astype(np.int64)
        iy = np.floor(m[1, 1] * np.arange(ny) + m[1, 3] + 0.5).astype(np.int64)
        iz = np.floor(m[2, 2] * np.arange(nz) + m[2, 3] + 0.5).astype(np.int64)
        ok_x, ok_y, ok_z = (ix >= 0) & (ix < sx), (iy >= 0) & (iy < sy), (iz >= 0) & (iz < sz)
        flat = (iz[:, None, None] * sy + iy[None, :, None]) * sx + ix[None, None, :]
        inside = ok_z[:, None, None] & ok_y[None, :, None] & ok_x[None, None, :]
        return np.where(inside, flat, -1)
    yy, xx = np.meshgrid(np.arange(ny, dtype=float), np.arange(nx, dtype=float), indexing="ij")
    out = np.full(target_shape, -1, dtype=np.int64)
    for z in range(nz):
        jx, jy, jz = (
            np.floor(m[i, 0] * xx + m[i, 1] * yy + m[i, 2] * z + m[i, 3] + 0.5).astype(np.int64)
            for i in range(3)
        )
        inside = (jx >= 0) & (jx < sx) & (jy >= 0) & (jy < sy) & (jz >= 0) & (jz < sz)
        out[z] = np.where(inside, (jz * sy + jy) * sx + jx, -1)
    return out


def _axis_indices(
    mask_geometry: Geometry,
    mask_shape: tuple[int, ...],
    target: Geometry,
    target_shape: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per-axis mask indices ``(iz, iy, ix)`` of the target's slices, rows and columns when
    the grids share their axes (the usual case: same orientation, binned in-plane), with -1
    outside the mask grid; ``None`` when they do not.

    Rounded exactly as :func:`grid_lookup` rounds, so both give the same voxels.
    """
    m = np.linalg.inv(mask_geometry.affine_lps) @ target.affine_lps
    if not np.allclose(m[:3, :3] - np.diag(np.diag(m[:3, :3])), 0.0, atol=1e-9):
        return None
    out = []
    # Affine column 2 is z, 1 is y, 0 is x; the shapes are (z, y, x).
    for axis, n_target, n_mask in zip((2, 1, 0), target_shape, mask_shape, strict=True):
        index = np.floor(m[axis, axis] * np.arange(n_target) + m[axis, 3] + 0.5).astype(np.intp)
        out.append(np.where((index >= 0) & (index < n_mask), index, -1))
    return out[0], out[1], out[2]


def masks_to_grid(
    masks_zyx: Sequence[np.ndarray],
    mask_geometry: Geometry,
    target: Geometry,
    target_shape: tuple[int, ...],
) -> np.ndarray:
    """Nearest-neighbour resampling of several masks of one grid onto another grid.

    Parameters
    ----------
    masks_zyx : sequence of numpy.ndarray
        Bool ``(z, y, x)`` masks, all on ``mask_geometry``.
    mask_geometry, target : Geometry
        Source and target grids.
    target_shape : tuple of int
        ``(z, y, x)`` of the target grid.

    Returns
    -------
    numpy.ndarray
        Bool ``(*target_shape, len(masks_zyx))`` (a view whose memory holds one
        segment after the other); False outside the masks' grid.
    """
    if not masks_zyx:
        return np.zeros((*target_shape, 0), dtype=bool)
    # One False voxel past the end of every axis: index -1 (outside) lands on it. Segments
    # lead in memory: every step gathers whole rows, and each SEG frame (one segment of
    # one slice) is then a contiguous plane for the encoder, whose sum over segments
    # adds planes.
    stacked = np.zeros((len(masks_zyx), *(n + 1 for n in masks_zyx[0].shape)), bool)
    for k, mask in enumerate(masks_zyx):
        stacked[k, :-1, :-1, :-1] = mask
    axes = _axis_indices(mask_geometry, masks_zyx[0].shape, target, target_shape)
    if axes is not None:
        # Columns, then rows, then slices: each step only gathers, never a full index grid
        # (80 x 512 x 512 int64 indices would be 170 MB for a thin-slice study), and the
        # element-wise gather runs on the small grid while the steps that make the fine
        # grid copy whole rows, then whole planes (5 x faster on a 1 mm study).
        iz, iy, ix = axes
        out = np.take(np.take(np.take(stacked, ix, 3), iy, 2), iz, 1)
    else:
        lookup = grid_lookup(mask_geometry, masks_zyx[0].shape, target, target_shape)
        nz, ny, nx = masks_zyx[0].shape
        flat = stacked[:, :-1, :-1, :-1].reshape(len(masks_zyx), nz * ny * nx)
        flat = np.concatenate([flat, np.zeros((len(masks_zyx), 1), bool)], axis=1)
        out = flat[:, lookup]  # index -1 -> the False column
    moved: np.ndarray = np.moveaxis(out, 0, -1)
    return moved


def mask_to_grid(
    mask_zyx: np.ndarray,
    mask_geometry: Geometry,
    target: Geometry,
    target_shape: tuple[int, ...],
    lookup: np.ndarray | None = None,
) -> np.ndarray:
    """Nearest-neighbour resampling of a mask onto another grid of the same patient.

    Parameters
    ----------
    mask_zyx : numpy.ndarray
        Bool ``(z, y, x)`` mask on ``mask_geometry``.
    mask_geometry, target : Geometry
        Source and target grids.
    target_shape : tuple of int
        ``(z, y, x)`` of the target grid.
    lookup : numpy.ndarray, optional
        :func:`grid_lookup` of these grids, to share between masks.

    Returns
    -------
    numpy.ndarray
        Bool mask of ``target_shape``; False outside the mask's grid.
    """
    if lookup is None:
        return masks_to_grid([mask_zyx], mask_geometry, target, target_shape)[..., 0]
    flat = np.append(mask_zyx.ravel().astype(bool), False)  # index -1 -> False
    out: np.ndarray = flat[lookup]
    return out


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
    frame_slice = None
    plane_positions = None
    if is_enhanced(ordered[0]):
        target, frame_slice, slice_positions = _frames_geometry(ordered[0])
        shape = (len(slice_positions), int(ordered[0].Rows), int(ordered[0].Columns))
        if len(slice_positions) < len(frame_slice):
            # Several frames per slice (b-values, time points): one SEG frame per slice,
            # placed explicitly.
            plane_positions = [
                hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, tuple(p))
                for p in slice_positions
            ]
            frame_slice = None
    else:
        target = source_geometry(ordered)
        shape = (len(ordered), int(ordered[0].Rows), int(ordered[0].Columns))
    # As uint8 (the same 0/1 values and bits): highdicom's overlap check sums the segments
    # of every pixel, three times faster over uint8 than over bool.
    masks = [r.mask_zyx for r in regions]
    pixels = masks_to_grid(masks, analysis_geometry, target, shape).view(np.uint8)
    if frame_slice is not None:
        pixels = pixels[frame_slice]  # in the source's frame order, as highdicom pairs them
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
    seg = hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=pixels,
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
    seg.BodyPartExamined = "HEAD"
    return seg
