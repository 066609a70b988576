"""Kernel symbols from /proc/kallsyms.

`KernelSymbols.resolve(addr)` returns the plain function name (`vfs_read`); the `_[k]` suffix
of the folded convention is added by `Symbolizer.kernel_frames`, so this module stays usable for
tables and reports that show kernel names bare. Symbols of loadable modules (and of JIT-compiled
BPF programs, listed as module `bpf`) carry their module name in `KernelSymbol.module`.
An address no symbol covers resolves to `0x<hex>`, so no frame is ever dropped.

/proc/kallsyms lists ~120k symbols; only text symbols are kept, in compact arrays. With
`kernel.kptr_restrict` set, or without CAP_SYSLOG, every address reads
as zero; `restricted` is then true and every address resolves to its hex form.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from otlp_ebpf import hosttext

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
    """Sorted kernel text symbols with lookup by address.

    Kept compact because it lives for the whole run: addresses in one `array('Q')`, and each
    symbol's `name[\t[module]]` text in one bytes blob, found through `array('I')`s of start
    and end offsets (about 5 MB for 120k symbols, against ~35 MB as a list of per-line
    objects).
    """

    def __init__(self, addrs: array, blob: bytes, starts: array, ends: array) -> None:
        self._addrs = addrs
        self._blob = blob
        self._starts = starts
        self._ends = ends
        self.restricted = bool(addrs) and not any(addrs[:64])

    @classmethod
    def load(cls, path: str = KALLSYMS_PATH) -> KernelSymbols:
        """Read and index a kallsyms file (OSError propagates to the caller)."""
        with open(path, "rb") as fh:
            return cls.from_lines(fh)

    @classmethod
    def parse(cls, data: bytes) -> KernelSymbols:
        """Index kallsyms text given as bytes."""
        return cls.from_lines(data.splitlines())

    @classmethod
    def from_lines(cls, lines: Iterable[bytes]) -> KernelSymbols:
        """Index lines `ADDR TYPE NAME[\t[MODULE]]`, keeping text symbols only. Streaming into
        one growing blob keeps the peak memory of a 120k-symbol load near the result's size."""
        addrs = array("Q")
        offsets = array("I", [0])
        blob = bytearray()
        for line in lines:
            addr, _, rest = line.partition(b" ")
            if len(rest) < 3 or rest[0] not in _TEXT_TYPES:
                continue
            try:
                addrs.append(int(addr, 16))
            except ValueError:
                continue
            blob += rest[2:].rstrip(b"\n")
            offsets.append(len(blob))
        symbols = cls(addrs, bytes(blob), offsets[:-1], offsets[1:])
        unsorted_from = _first_descent(addrs)
        return symbols if unsorted_from is None else symbols._sorted(unsorted_from)

    def _sorted(self, unsorted_from: int) -> KernelSymbols:
        """The same symbols in address order. kallsyms lists the kernel image in order and
        then modules and BPF programs (loaded ones included, ours among them): only that tail
        is sorted, then merged with the image's run, and the text blob is shared, not copied.
        Sorting all 120k entries as Python objects peaked at ~15 MB for a few dozen strays."""
        addrs, old_starts, old_ends = self._addrs, self._starts, self._ends
        tail = sorted(range(unsorted_from, len(addrs)), key=addrs.__getitem__)
        new_addrs, starts, ends = array("Q"), array("I"), array("I")
        copied = 0
        for i in tail:
            at = bisect.bisect_right(addrs, addrs[i], 0, unsorted_from)
            new_addrs.extend(addrs[copied:at])
            starts.extend(old_starts[copied:at])
            ends.extend(old_ends[copied:at])
            new_addrs.append(addrs[i])
            starts.append(old_starts[i])
            ends.append(old_ends[i])
            copied = at
        new_addrs.extend(addrs[copied:unsorted_from])
        starts.extend(old_starts[copied:unsorted_from])
        ends.extend(old_ends[copied:unsorted_from])
        return KernelSymbols(new_addrs, self._blob, starts, ends)

    def _text(self, index: int) -> bytes:
        return self._blob[self._starts[index] : self._ends[index]]

    def __len__(self) -> int:
        return len(self._addrs)

    def lookup(self, addr: int) -> KernelSymbol | None:
        """The symbol covering `addr`, or None when no symbol does."""
        if self.restricted or addr < 0:
            return None
        index = bisect.bisect_right(self._addrs, addr) - 1
        if index < 0:
            return None
        offset = addr - self._addrs[index]
        if offset >= _MAX_SYMBOL_SPAN:
            return None
        name, _, module = self._text(index).partition(b"\t")
        return KernelSymbol(
            hosttext.decode(name),
            hosttext.decode(module.strip(b"[] ")),
            offset,
        )

    def resolve(self, addr: int) -> str:
        """The plain function name at `addr`, or `0x<hex>` when unknown."""
        symbol = self.lookup(addr)
        return symbol.name if symbol else f"0x{addr:x}"


def _first_descent(addrs: array) -> int | None:
    """The index of the first address lower than the one before it (None when sorted)."""
    for i in range(1, len(addrs)):
        if addrs[i] < addrs[i - 1]:
            return i
    return None
