"""DICOM networking: the storage SCP (listener) and the SCU side (echo, send)."""
