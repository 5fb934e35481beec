"""Typed errors. Every error a user can trigger carries a plain-language ``user_message``.

``InputError`` means the uploaded file cannot be analysed (CLI exit 2, an error panel in the UI).
``BundleError`` means the model bundle is missing, incomplete or tampered with.
"""
from __future__ import annotations


class SpineUIError(Exception):
    """Base class; ``str(err)`` is safe to show to a user (no paths, no patient data)."""

    default_message = "The request could not be completed."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)

    @property
    def user_message(self) -> str:
        return str(self)


class InputError(SpineUIError):
    """The uploaded file cannot be read as a radiograph."""

    default_message = "The file could not be read as a radiograph."


class EmptyFileError(InputError):
    default_message = "The file is empty (0 bytes)."


class UnsupportedFormatError(InputError):
    default_message = "Unsupported file type: upload a DICOM (.dcm), PNG, JPEG, TIFF or BMP radiograph."


class CorruptFileError(InputError):
    default_message = "The file is damaged or truncated and could not be decoded."


class MissingPixelDataError(InputError):
    default_message = "The DICOM file contains no image (no Pixel Data element)."


class MultiFrameError(InputError):
    default_message = "Multi-frame DICOM (a series or cine loop) is not supported: upload a single radiograph."


class ColorImageError(InputError):
    default_message = "Colour DICOM images are not radiographs: upload a grayscale X-ray."


class UnsupportedCodecError(InputError):
    default_message = "The DICOM is compressed with a codec this server cannot decode."


class ImageTooLargeError(InputError):
    default_message = "The image is too large to be a real radiograph."


class ImageTooSmallError(InputError):
    default_message = "The image is too small to be a radiograph."


class InvalidPixelDataError(InputError):
    default_message = "The image contains invalid pixel values (NaN or infinity) or no contrast."


class BundleError(SpineUIError):
    """The model bundle cannot be used."""

    default_message = "The model bundle could not be loaded."


class BundleIntegrityError(BundleError):
    default_message = "The model bundle failed its integrity check: a file does not match the manifest hash."


class HubUnavailableError(BundleError):
    default_message = "The model hub is not reachable (offline); using local bundles only."


class SchedulerError(SpineUIError):
    """The inference scheduler could not run a task."""

    default_message = "The analysis could not be scheduled."


class SchedulerBusyError(SchedulerError):
    default_message = "The server is busy (too many analyses are waiting): try again in a minute."


class SchedulerClosedError(SchedulerError):
    default_message = "The server is shutting down: try again in a minute."


class TaskCancelledError(SchedulerError):
    default_message = "The explanation was stopped (its study was closed or replaced)."


class CalibrationDataError(InputError):
    """A site's review or truth file cannot be used to recalibrate a bundle."""

    default_message = "The reviews file cannot be used for recalibration."


class StoreError(SpineUIError):
    """The database of worklists, review marks and the audit log cannot be used (the analysis still works)."""

    default_message = ("The review database is not available: results are shown but nothing can be saved right "
                       "now. Ask your administrator to check the database.")


class StoreUnavailableError(StoreError):
    default_message = ("The review database cannot be reached (PostgreSQL is down or refuses connections): "
                       "nothing was saved. Results are still shown; try saving again in a moment.")


class StoreLockedError(StoreError):
    default_message = ("The review database is busy (locked by another process): nothing was saved. Try again "
                       "in a moment.")


class StoreReadOnlyError(StoreError):
    default_message = ("The review database is read-only (file or folder permissions): nothing was saved. Ask "
                       "your administrator to make the data folder writable.")


class StoreFullError(StoreError):
    default_message = "The disk holding the review database is full: nothing was saved. Free some space."


class StoreCorruptError(StoreError):
    default_message = ("The review database file is damaged or is not a database: nothing was saved. Restore "
                       "it from a backup or move it away to start a new one.")


class EngineUnavailableError(SpineUIError):
    """A batch engine cannot run here (an optional dependency is missing, a cluster is unreachable)."""

    default_message = "The requested batch engine is not available on this machine."


class PacsError(SpineUIError):
    """The PACS (DICOMweb) could not be reached or refused a request; messages carry no identifiers."""

    default_message = "The PACS could not be reached (DICOMweb); nothing was stored, try again later."


class PacsUnavailableError(PacsError):
    default_message = "The PACS is not reachable or keeps failing (DICOMweb); nothing was stored."


class PacsStoreError(PacsError):
    default_message = "The PACS refused to store the results (STOW-RS); they are not marked as sent."
