"""medseg errors raised inside MONAI transforms, shown as themselves.

MONAI's ``apply_transform`` re-raises any error of a transform as ``RuntimeError: applying
transform <...LoadCased object at 0x...>`` (once per nested ``Compose``), chaining the original
as ``__cause__``. A `MedsegError` raised while loading a case (bad label values, label on
another grid...) already says which file and what to do; `medseg_errors_unwrapped` digs it
out so the CLI prints that message instead of MONAI's wrapper and a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from medseg.errors import MedsegError


def wrapped_medseg_error(exc: BaseException) -> MedsegError | None:
    """The `MedsegError` in `exc`'s chain of causes (MONAI's wrappers), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MedsegError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def medseg_errors_unwrapped() -> Iterator[None]:
    """Re-raise a `MedsegError` found inside a ``RuntimeError`` from MONAI as itself.

    Example::

        with medseg_errors_unwrapped():
            run_training(cfg, run_dir, resume, ctx)
    """
    try:
        yield
    except RuntimeError as exc:
        inner = wrapped_medseg_error(exc)
        if inner is None:
            raise
        # its own traceback (kept) points into the transform; MONAI's wrapper adds nothing
        raise inner from None
