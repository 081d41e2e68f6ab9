"""`dicomvault dicom-serve`: a read-only DICOM archive straight from the backup.

A Query/Retrieve SCP (`dimse`) and DICOMweb QIDO-RS/WADO-RS (`web`) answer from a local index of
the snapshots' catalogues (`index`, `query`) and fetch each instance on demand, from the first
site that answers (`sites`), into a bounded in-memory cache (`instances`). Every query and
retrieve is written to the audit trail (`audit`). `service` ties them together. Never writes to
the repository and never writes decrypted instance bytes to disk.
"""
