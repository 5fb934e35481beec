"""Services built on the core: batch engines, and (next) store, PACS, DICOM output, schedulers."""
