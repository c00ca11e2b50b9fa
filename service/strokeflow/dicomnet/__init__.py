"""DICOM networking shared by the receiving and the sending side: the status table, C-ECHO and
C-STORE as a client. It imports nothing of the service but the configuration."""
