"""Digital phantoms: synthetic CT/MR stroke studies with known truth, written as DICOM."""
