"""Text that comes from the host: process names, command lines, paths, symbol names.

Any user can name a process or a file with bytes that are not UTF-8. Such bytes are kept,
not dropped or replaced: each one that is not part of valid UTF-8 becomes the four characters
`\\xNN` (Python's "backslashreplace"), so `evil\\xff\\xfe` reads the same in every output and
the original bytes can be told from it. The result is always valid Unicode, which every output
format can hold; each format then escapes what it must (docs/security.md).
"""

from __future__ import annotations

import os

__all__ = ["decode", "from_fs", "read"]


def decode(raw: bytes) -> str:
    """Host bytes -> text, undecodable bytes kept as `\\xNN`."""
    return raw.decode("utf-8", "backslashreplace")


def from_fs(text: str) -> str:
    """A string from the os module or sys.argv (undecodable bytes held as lone surrogates,
    which no output can encode) -> text as `decode` gives it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return decode(os.fsencode(text))
    return text


def read(path: str) -> str:
    """A whole /proc or /sys file as text (OSError as for any read)."""
    with open(path, "rb") as fh:
        return decode(fh.read())
