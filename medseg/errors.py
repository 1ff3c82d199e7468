"""The medseg error family.

Every error a user can cause (bad file, bad config, wrong checkpoint) is a `MedsegError` whose
message names the file / series / config key, says what was expected and what was found, and
what to do. The CLI prints these without a traceback (`-v` shows it); anything else is a bug.
"""

from __future__ import annotations


class MedsegError(Exception):
    """Base class of all user-facing medseg errors."""


class InputError(MedsegError):
    """An input file or folder is missing, unreadable or of the wrong kind."""


class DicomError(InputError):
    """A DICOM file or series cannot be used (corrupt, partial, inconsistent geometry...)."""


class DataError(InputError):
    """Training/evaluation data that cannot be used as a whole (lists every bad case)."""


class GeometryError(MedsegError):
    """Two volumes that must share a grid do not (shape, spacing, orientation or origin)."""


class ConfigError(MedsegError):
    """A workflow/config value or key is invalid."""


class CheckpointError(MedsegError):
    """A checkpoint is missing, corrupt, or from another task/architecture."""


class TrainingError(MedsegError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step, epoch and cases."""
