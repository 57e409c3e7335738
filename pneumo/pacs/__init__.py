"""Results a PACS can hold: the DICOM SR of a scored film (sr.py), a PACS over DICOMweb (dicomweb.py),
a study scored from the PACS and stored back (roundtrip.py), SRs for `pneumo predict`'s rows (predictions.py)."""
