"""medseg: CT/MRI segmentation and image enhancement with first-class DICOM support."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medseg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from medseg.errors import MedsegError  # noqa: E402

__all__ = ["MedsegError", "__version__"]
