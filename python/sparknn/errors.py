"""Exceptions raised by sparknn.

Each also inherits the builtin a caller would catch without knowing sparknn:
``IndexFileError`` and ``InvalidArgumentError`` are ``ValueError``s,
``IndexIOError`` is an ``OSError``, ``UnsupportedError`` a ``NotImplementedError``.
"""

from sparknn._core import (  # noqa: F401  (re-exported)
    IndexFileError,
    IndexIOError,
    InvalidArgumentError,
    UnsupportedError,
)

__all__ = ["IndexFileError", "IndexIOError", "InvalidArgumentError", "UnsupportedError"]
