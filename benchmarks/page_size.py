"""Bytes of result pages sent to PACS per study: as written (uncompressed) and RLE Lossless.

Analyses the default CT perfusion phantom (or the result folders given), then encodes every
Secondary Capture page as dispatch does for a destination that accepts RLE, checks that it
decodes to the same pixels and prints the sizes and the encoding time::

    python benchmarks/page_size.py [RESULTS_DIR ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import RLELossless, SecondaryCaptureImageStorage

from strokeflow.analyze import analyze_paths
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study


def _phantom_results(root: Path) -> Path:
    files = write_ctp_study(simulate_ctp(CtpPhantomOptions()), root / "study")
    analyze_paths([p for p in files if p.suffix == ".dcm"], root / "out")
    return root / "out"


def measure(folder: Path) -> None:
    """Print the page and total sizes of one results folder, uncompressed and RLE."""
    objects = sorted(folder.rglob("*.dcm"))
    total = compressed_total = 0
    pages = 0
    encode_s = 0.0
    for path in objects:
        size = path.stat().st_size
        total += size
        ds = dcmread(path)
        if str(ds.SOPClassUID) != SecondaryCaptureImageStorage:
            compressed_total += size
            continue
        pages += 1
        original = ds.pixel_array.copy()
        start = time.perf_counter()
        ds.compress(RLELossless, generate_instance_uid=False)
        encode_s += time.perf_counter() - start
        np.testing.assert_array_equal(ds.pixel_array, original)
        compressed_total += size - len(original.tobytes()) + len(ds.PixelData)
    print(
        f"{folder}: {len(objects)} objects, {pages} SC pages: {total / 1e6:.1f} MB as written, "
        f"{compressed_total / 1e6:.1f} MB with RLE pages ({compressed_total / total:.0%}); "
        f"RLE encoding {1000 * encode_s / max(pages, 1):.0f} ms a page"
    )


def main(argv: list[str]) -> None:
    if argv:
        for folder in argv:
            measure(Path(folder))
        return
    with tempfile.TemporaryDirectory() as tmp:
        measure(_phantom_results(Path(tmp)))


if __name__ == "__main__":
    main(sys.argv[1:])
