"""Result outputs: results.json, NIfTI maps for researchers, and (later) DICOM objects."""
