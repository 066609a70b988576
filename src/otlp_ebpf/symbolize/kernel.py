"""Kernel symbols from /proc/kallsyms.

`KernelSymbols.resolve(addr)` returns the plain function name (`vfs_read`); the `_[k]` suffix
of the folded convention is added by `Symbolizer.kernel_frames`, so this module stays usable for
tables and reports that show kernel names bare. Symbols of loadable modules (and of JIT-compiled
BPF programs, listed as module `bpf`) carry their module name in `KernelSymbol.module`.
An address no symbol covers resolves to `0x<hex>`, so no frame is ever dropped.

/proc/kallsyms lists ~120k symbols. Lines are kept as bytes and searched by their fixed-width
hexadecimal address (lexicographic order equals numeric order at a fixed width), which avoids
converting every address to an integer: loading costs about 55 ms here, most of it the kernel
generating the file. With `kernel.kptr_restrict` set, or without CAP_SYSLOG, every address reads
as zero; `restricted` is then true and every address resolves to its hex form.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

KALLSYMS_PATH = "/proc/kallsyms"

# Code symbols: global/local text and weak symbols.
_TEXT_TYPES = frozenset(b"TtWw")
# A return address further than this past the nearest symbol is not inside it: it lies in a
# gap between the kernel image and modules, or is garbage from a broken stack.
_MAX_SYMBOL_SPAN = 1 << 20


@dataclass(frozen=True)
class KernelSymbol:
    """A kernel function, the module it belongs to ("" for the kernel image) and the offset."""

    name: str
    module: str
    offset: int


class KernelSymbols:
    """Sorted kernel text symbols with lookup by address."""

    def __init__(self, lines: list[bytes], width: int) -> None:
        # Each line is `ADDR TYPE NAME[\t[MODULE]]`, filtered to text symbols, sorted by ADDR.
        self._lines = lines
        self._width = width
        self._keys = [line[:width] for line in lines]
        self.restricted = bool(lines) and not any(key.strip(b"0") for key in self._keys[:64])

    @classmethod
    def load(cls, path: str = KALLSYMS_PATH) -> KernelSymbols:
        """Read and index a kallsyms file (OSError propagates to the caller)."""
        with open(path, "rb") as fh:
            data = fh.read()
        return cls.parse(data)

    @classmethod
    def parse(cls, data: bytes) -> KernelSymbols:
        """Index kallsyms text given as bytes."""
        first_space = data.find(b" ")
        width = first_space if first_space > 0 else 16
        type_at = width + 1
        lines = [
            line
            for line in data.split(b"\n")
            if len(line) > type_at + 1 and line[type_at] in _TEXT_TYPES
        ]
        keys = [line[:width] for line in lines]
        if any(a > b for a, b in itertools.pairwise(keys)):
            lines.sort(key=lambda line: line[:width])
        return cls(lines, width)

    def __len__(self) -> int:
        return len(self._lines)

    def lookup(self, addr: int) -> KernelSymbol | None:
        """The symbol covering `addr`, or None when no symbol does."""
        if self.restricted or addr < 0:
            return None
        key = b"%0*x" % (self._width, addr)
        if len(key) != self._width:
            return None
        index = bisect.bisect_right(self._keys, key) - 1
        if index < 0:
            return None
        line = self._lines[index]
        offset = addr - int(line[: self._width], 16)
        if offset >= _MAX_SYMBOL_SPAN:
            return None
        name, _, module = line[self._width + 3 :].partition(b"\t")
        return KernelSymbol(
            name.decode("utf-8", "replace"),
            module.strip(b"[] ").decode("utf-8", "replace"),
            offset,
        )

    def resolve(self, addr: int) -> str:
        """The plain function name at `addr`, or `0x<hex>` when unknown."""
        symbol = self.lookup(addr)
        return symbol.name if symbol else f"0x{addr:x}"
