"""Our own Secondary Capture result objects as PNG for the browser."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread


class ImageError(ValueError):
    """The file is not a displayable single-frame image; the message names it."""


def dicom_to_png(path: Path) -> bytes:
    """Encode the first frame of a DICOM image (RGB or MONOCHROME1/2) as PNG.

    Raises
    ------
    ImageError
        Unreadable file, no pixel data, or an unsupported photometric interpretation.
    """
    try:
        ds = dcmread(path)
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many types for unreadable pixel data
        raise ImageError(f"{path.name}: cannot decode the pixel data: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", ""))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if photometric == "RGB":
        image = Image.fromarray(pixels.astype(np.uint8), mode="RGB")
    elif photometric in ("MONOCHROME1", "MONOCHROME2"):
        values = pixels.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else values * 0.0
        if photometric == "MONOCHROME1":
            scaled = 255.0 - scaled
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    else:
        raise ImageError(f"{path.name}: photometric interpretation {photometric!r} not shown")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
