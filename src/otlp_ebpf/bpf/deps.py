"""Which files an object depends on: its source and the local headers it includes, recursively.

Dependency-free on purpose: the build script loads this file directly, before the package is
installed, and the runtime uses it to tell a stale object from a fresh one.
"""

from __future__ import annotations

import re
from pathlib import Path

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def dependencies(source: Path) -> set[Path]:
    """The source plus every quoted include found next to it, followed recursively."""
    seen: set[Path] = set()
    todo = [source]
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        todo.extend(source.parent / name for name in _INCLUDE.findall(path.read_text()))
    return seen


def is_stale(source: Path) -> bool:
    obj = source.with_suffix(".o")
    if not obj.exists():
        return True
    newest = max(p.stat().st_mtime for p in dependencies(source))
    return obj.stat().st_mtime < newest
