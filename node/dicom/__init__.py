"""DICOM encoding helpers that need no storage or network: Part-10 parsing and validation."""
