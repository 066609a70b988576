"""Qualified names of code objects from their source, for CPython before 3.11.

Code objects carry `co_qualname` (`Class.method`, `outer.<locals>.inner`) only from 3.11 on;
before, only `co_name`. The source file a code object names is parsed with `ast` and each
function, class, lambda and comprehension mapped by (name, first line) to the qualified name
PEP 3155 gives it. The file is the target's (read through /proc/PID/root, relative names
from its working directory) and is hostile input: only regular files up to MAX_SOURCE_BYTES
are read, decoding follows the file's own encoding declaration and any failure (bad bytes,
syntax of another version, nesting too deep) leaves `co_name`. Parsed files are cached by
(path, device, inode, size, mtime), so an edited file is parsed again, and bounded.
"""

from __future__ import annotations

import ast
import os
import stat
from collections import OrderedDict

MAX_SOURCE_BYTES = 2 << 20
CACHE_FILES = 256

_Key = tuple[str, int]  # (co_name, co_firstlineno)
_COMPREHENSIONS: dict[type[ast.AST], str] = {
    ast.ListComp: "<listcomp>",
    ast.SetComp: "<setcomp>",
    ast.DictComp: "<dictcomp>",
    ast.GeneratorExp: "<genexpr>",
}


def qualnames_of(source: bytes) -> dict[_Key, str]:
    """(name, first line) -> qualified name for every scope of a module's source; {} when it
    cannot be parsed."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError, UnicodeError):
        return {}
    out: dict[_Key, str] = {}
    try:
        _visit(tree, "", out)
    except RecursionError:
        return {}
    return out


def _add(out: dict[_Key, str], name: str, lines: list[int], qualname: str) -> None:
    for line in lines:
        out.setdefault((name, line), qualname)


def _visit(node: ast.AST, prefix: str, out: dict[_Key, str]) -> None:
    """Name the scopes below `node`, whose own scope gives its children `prefix`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            qualname = prefix + child.name
            # co_firstlineno is the first decorator's line when there are decorators.
            lines = [child.lineno, *(d.lineno for d in child.decorator_list)]
            _add(out, child.name, [min(lines), child.lineno], qualname)
            inner = qualname + ("." if isinstance(child, ast.ClassDef) else ".<locals>.")
            # Decorators, defaults, annotations and bases belong to the enclosing scope.
            for part in ast.iter_child_nodes(child):
                _visit_one(part, inner if part in child.body else prefix, out)
        elif isinstance(child, ast.Lambda):
            qualname = prefix + "<lambda>"
            _add(out, "<lambda>", [child.lineno], qualname)
            _visit_one(child.args, prefix, out)
            _visit_one(child.body, qualname + ".<locals>.", out)
        elif isinstance(child, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            name = _COMPREHENSIONS[type(child)]
            qualname = prefix + name
            _add(out, name, [child.lineno], qualname)
            _visit(child, qualname + ".<locals>.", out)
        else:
            _visit(child, prefix, out)


def _visit_one(node: ast.AST, prefix: str, out: dict[_Key, str]) -> None:
    """`node` itself and what is below it, in the scope that gives `prefix`."""
    holder = ast.Module(body=[], type_ignores=[])
    holder.body = [node]  # type: ignore[list-item]
    _visit(holder, prefix, out)


class SourceQualnames:
    """Qualified names read from source files, cached per file version."""

    def __init__(self, max_files: int = CACHE_FILES) -> None:
        self.max_files = max_files
        self._files: OrderedDict[tuple[str, int, int, int, int], dict[_Key, str]] = OrderedDict()
        self.parsed = 0
        self.refused = 0  # not a regular file, too big, or unreadable

    def qualname(self, path: str, name: str, firstlineno: int) -> str | None:
        """The qualified name of the scope `name` starting at `firstlineno` in the file at
        `path` (as this process can open it), or None when it cannot be told."""
        names = self._names(path)
        return names.get((name, firstlineno)) if names else None

    def _names(self, path: str) -> dict[_Key, str] | None:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SOURCE_BYTES:
            self.refused += 1
            return None
        key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        names = self._files.get(key)
        if names is not None:
            self._files.move_to_end(key)
            return names
        try:
            # O_NONBLOCK: a file swapped for a FIFO after the check never blocks the read.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                source = os.read(fd, MAX_SOURCE_BYTES + 1)
            finally:
                os.close(fd)
        except OSError:
            self.refused += 1
            return None
        if len(source) > MAX_SOURCE_BYTES:
            self.refused += 1
            return None
        names = qualnames_of(source)
        self.parsed += 1
        self._files[key] = names
        if len(self._files) > self.max_files:
            self._files.popitem(last=False)
        return names


def source_path(filename: str, pid: int, proc_root: str = "/proc") -> str | None:
    """Where this process can open a target's source file: under its root, relative names
    from its working directory; None for names that are no file (`<frozen x>`, `<string>`)."""
    if not filename or filename.startswith("<") or "\0" in filename:
        return None
    if os.path.isabs(filename):
        return f"{proc_root}/{pid}/root{filename}"
    return f"{proc_root}/{pid}/cwd/{filename}"
