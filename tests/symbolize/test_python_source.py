"""Qualified names from source files (CPython before 3.11 has no co_qualname)."""

from __future__ import annotations

import os
from pathlib import Path

from otlp_ebpf.symbolize.python_source import (
    MAX_SOURCE_BYTES,
    SourceQualnames,
    qualnames_of,
    source_path,
)

SOURCE = b"""\
def deco(f):
    return f


class C:
    @deco
    @deco
    def m(self):
        pass

    class D:
        async def n(self):
            pass


def outer(x=lambda: 0):
    def inner():
        pass
    g = lambda: [y for y in range(3)]
    return inner, g, {k: 1 for k in range(3)}
"""


def test_each_scope_by_name_and_first_line() -> None:
    names = qualnames_of(SOURCE)
    assert names[("C", 5)] == "C"
    # A decorated function's code starts at its first decorator.
    assert names[("m", 6)] == "C.m"
    assert names[("m", 8)] == "C.m"
    assert names[("n", 12)] == "C.D.n"
    assert names[("inner", 17)] == "outer.<locals>.inner"
    assert names[("<lambda>", 19)] == "outer.<locals>.<lambda>"
    assert names[("<listcomp>", 19)] == "outer.<locals>.<lambda>.<locals>.<listcomp>"
    assert names[("<dictcomp>", 20)] == "outer.<locals>.<dictcomp>"
    # A default value is evaluated where the function is defined.
    assert names[("<lambda>", 16)] == "<lambda>"


def test_the_interpreter_agrees() -> None:
    """The names match what CPython itself computes (co_qualname, 3.11+, this interpreter)."""
    code = compile(SOURCE, "x.py", "exec")
    names = qualnames_of(SOURCE)
    seen = 0
    stack = [code]
    while stack:
        co = stack.pop()
        stack += [c for c in co.co_consts if hasattr(c, "co_qualname")]
        if co.co_name != "<module>":
            assert names[(co.co_name, co.co_firstlineno)] == co.co_qualname
            seen += 1
    assert seen >= 9


def test_hostile_sources_give_nothing() -> None:
    assert qualnames_of(b"def f(:\n") == {}
    assert qualnames_of(b"\xff\xfe\x00garbage") == {}
    assert qualnames_of(b"x = " + b"(" * 100_000 + b")" * 100_000) == {}
    assert qualnames_of(b"# -*- coding: no-such-codec -*-\ndef f(): pass\n") == {}


def test_files_are_cached_by_version_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_bytes(b"def f():\n    pass\n")
    sources = SourceQualnames()
    assert sources.qualname(str(path), "f", 1) == "f"
    assert sources.qualname(str(path), "f", 1) == "f"
    assert sources.parsed == 1
    path.write_bytes(b"class K:\n    def f(self):\n        pass\n")
    os.utime(path, ns=(1, 1))  # a new version, whatever the clock's resolution
    assert sources.qualname(str(path), "f", 2) == "K.f"
    assert sources.parsed == 2
    assert sources.qualname(str(path), "missing", 1) is None


def test_what_is_not_a_small_regular_file_is_refused(tmp_path: Path) -> None:
    sources = SourceQualnames()
    fifo = tmp_path / "fifo.py"
    os.mkfifo(fifo)
    assert sources.qualname(str(fifo), "f", 1) is None
    big = tmp_path / "big.py"
    big.write_bytes(b"#" * (MAX_SOURCE_BYTES + 1))
    assert sources.qualname(str(big), "f", 1) is None
    assert sources.qualname(str(tmp_path), "f", 1) is None
    assert sources.qualname(str(tmp_path / "absent.py"), "f", 1) is None
    assert sources.refused == 3


def test_source_paths_are_the_target_s() -> None:
    assert source_path("/srv/app.py", 42) == "/proc/42/root/srv/app.py"
    assert source_path("app.py", 42) == "/proc/42/cwd/app.py"
    assert source_path("<frozen importlib._bootstrap>", 42) is None
    assert source_path("<string>", 42) is None
    assert source_path("a\0b", 42) is None
