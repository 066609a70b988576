"""Function symbols of ELF files: .symtab, .dynsym, build-id and separate debug files.

Where symbols come from, merged: the file's own `.symtab` and `.dynsym`, and the `.symtab` of
its separate debug file, found (like gdb does) by build-id at
`<debug root>/.build-id/xx/rest.debug`, else by `.gnu_debuglink` next to the file, in its
`.debug/` directory, or under `<debug root>/<directory of the file>/`. Debian's `libc6-dbg` puts
libc's full symbols at the build-id path. A debuglink candidate is used only when its build-id
(or else its CRC32) matches.

Addresses: a stack holds run-time addresses. The caller turns one into a file offset with the
mapping it fell in (`addr - map.start + map.offset`), and `ElfInfo.vaddr_for_offset` turns the
file offset into the symbol-table address through the PT_LOAD segments. This is the same for
PIE/shared objects and fixed-address executables, so neither needs a special case.

Symbol choice: FUNC and IFUNC symbols that are defined. Each symbol covers [value, value+size);
a zero-size symbol covers up to the next symbol or the end of its section. Of several names at
one address, the one with fewest leading underscores wins (`nanosleep` over `__nanosleep` and
`__GI___nanosleep`), then global over weak over local, then the shorter name. C++ names are
demangled with `cxxfilt` (libstdc++'s `__cxa_demangle`) when it is installed; otherwise they
stay mangled.

Symbol tables are parsed with `struct` straight from the section bytes (pyelftools only reads
headers and notes): libc's debug symtab loads in ~10 ms this way, against ~400 ms iterating
pyelftools symbols. Tables are cached in memory per build-id, so every process running the same
binary or library shares one table.
"""

from __future__ import annotations

import bisect
import functools
import io
import os
import struct
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from otlp_ebpf import hosttext
from otlp_ebpf.symbolize.lru import Lru

DEFAULT_DEBUG_ROOT = "/usr/lib/debug"
# Symbol tables kept in memory, by build-id (libc's is ~1 MB of Python objects). A host that
# builds and runs new binaries all day would otherwise keep every table it met; an evicted
# table is parsed again if a sample needs it.
MAX_SYMBOL_TABLES = 128
# Function symbols held across those tables (~100 bytes each with their names): a host that
# builds and runs large binaries all day is bounded by bytes, not only by count.
MAX_HELD_SYMBOLS = 1_000_000
# And by bytes (addresses and names, SymbolTable.nbytes): C++ names run to kilobytes.
MAX_HELD_SYMBOL_BYTES = 48 << 20

_STT_FUNC = 2
_STT_GNU_IFUNC = 10
_STB_RANK = {1: 0, 2: 1, 0: 2}  # GLOBAL, WEAK, LOCAL
_SHN_LORESERVE = 0xFF00
_PT_LOAD = "PT_LOAD"


@dataclass(frozen=True)
class LoadSegment:
    """A PT_LOAD program header: where file bytes land in the ELF's address space."""

    offset: int
    vaddr: int
    filesz: int


@dataclass(frozen=True)
class ElfInfo:
    """What we need from an ELF's headers to find its symbols and translate addresses."""

    build_id: str
    debuglink: str
    debuglink_crc: int
    segments: tuple[LoadSegment, ...]
    shared: bool  # ET_DYN: a shared object or a PIE executable

    def vaddr_for_offset(self, file_offset: int) -> int | None:
        """The ELF virtual address of byte `file_offset` of the file, if a segment loads it."""
        for seg in self.segments:
            if seg.offset <= file_offset < seg.offset + seg.filesz:
                return seg.vaddr + (file_offset - seg.offset)
        return None


@dataclass(frozen=True)
class _RawSymbol:
    start: int
    size: int
    rank: tuple[int, int, int]
    name: bytes
    section_end: int


class SymbolTable:
    """Function symbols sorted by address, one name per address.

    Held compactly, for a host's worth of binaries stays in memory for the whole run: the
    addresses in two arrays and the names (as the file had them) in one byte string with
    their offsets, ~20 bytes a symbol plus its name instead of ~150 as three Python objects.
    A name is decoded when it is looked up."""

    def __init__(self) -> None:
        self.starts: array[int] = array("Q")
        self.ends: array[int] = array("Q")
        self._name_at: array[int] = array("Q", [0])
        self._names = b""

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def nbytes(self) -> int:
        """The memory the table holds (its arrays and names)."""
        arrays = (self.starts, self.ends, self._name_at)
        return sum(len(a) * a.itemsize for a in arrays) + len(self._names)

    def name(self, index: int) -> str:
        return hosttext.decode(self._names[self._name_at[index] : self._name_at[index + 1]])

    def lookup(self, vaddr: int) -> str | None:
        """The (demangled) name of the function covering `vaddr`, or None."""
        index = bisect.bisect_right(self.starts, vaddr) - 1
        if index < 0 or vaddr >= self.ends[index]:
            return None
        return demangle(self.name(index))

    @classmethod
    def from_raw(cls, raw: Iterable[_RawSymbol]) -> SymbolTable:
        by_start: dict[int, list[_RawSymbol]] = {}
        for sym in raw:
            if 0 <= sym.start < 1 << 64:
                by_start.setdefault(sym.start, []).append(sym)
        table = cls()
        names: list[bytes] = []
        offset = 0
        starts = sorted(by_start)
        for i, start in enumerate(starts):
            group = by_start[start]
            best = min(group, key=lambda s: s.rank)
            size = max(s.size for s in group)
            if size:
                end = start + size
            else:
                next_start = starts[i + 1] if i + 1 < len(starts) else best.section_end
                end = min(next_start, best.section_end) if best.section_end > start else next_start
            table.starts.append(start)
            table.ends.append(min(max(end, start + 1), (1 << 64) - 1))
            names.append(best.name)
            offset += len(best.name)
            table._name_at.append(offset)
        table._names = b"".join(names)
        return table


@dataclass(frozen=True)
class LoadedElf:
    """An ELF's header facts and its merged function symbols."""

    info: ElfInfo
    symbols: SymbolTable
    debug_file: str  # "" when no separate debug file was found


def file_opener(path: str) -> Callable[[], BinaryIO]:
    """An opener for `ElfSymbolizer.load` that opens `path` for binary reading."""

    def open_binary() -> BinaryIO:
        return open(path, "rb")

    return open_binary


class ElfSymbolizer:
    """Loads ELF symbol tables, with their debug files, cached per build-id.

    `debug_roots` are searched in order (default: /usr/lib/debug).
    """

    def __init__(
        self,
        debug_roots: Sequence[str] = (DEFAULT_DEBUG_ROOT,),
        max_tables: int = MAX_SYMBOL_TABLES,
        max_symbols: int = MAX_HELD_SYMBOLS,
        max_bytes: int = MAX_HELD_SYMBOL_BYTES,
    ) -> None:
        self.debug_roots = tuple(debug_roots)
        self.max_symbols = max_symbols
        self.max_bytes = max_bytes
        self.symbols_held = 0
        self.bytes_held = 0
        self._by_build_id: Lru[str, LoadedElf] = Lru(max_tables, self._dropped)
        self.files_parsed = 0

    def _dropped(self, _build_id: str, loaded: LoadedElf) -> None:
        self.symbols_held -= len(loaded.symbols)
        self.bytes_held -= loaded.symbols.nbytes

    def cached(self, build_id: str) -> LoadedElf | None:
        """The table of `build_id` if it is still held."""
        return self._by_build_id.get(build_id)

    def load(self, opener: Callable[[], BinaryIO], path: str) -> LoadedElf:
        """Symbols of the ELF that `opener` opens; `path` (as the process saw it) locates a
        debuglink target and names the file in errors. Raises ELFError/OSError when unreadable.
        """
        with opener() as stream:
            elf = ELFFile(stream)
            info = _info_of(elf)
            cached = self._by_build_id.get(info.build_id) if info.build_id else None
            if cached is not None:
                return cached
            raw = list(_function_symbols(elf))
        self.files_parsed += 1
        debug_file = self._find_debug_file(info, path)
        if debug_file:
            raw.extend(self._debug_symbols(debug_file))
        loaded = LoadedElf(info, SymbolTable.from_raw(raw), debug_file)
        if info.build_id:
            self._by_build_id[info.build_id] = loaded
            self.symbols_held += len(loaded.symbols)
            self.bytes_held += loaded.symbols.nbytes
            while len(self._by_build_id) > 1 and (
                self.symbols_held > self.max_symbols or self.bytes_held > self.max_bytes
            ):
                self._by_build_id.evict_oldest()
        return loaded

    def trim(self, max_bytes: int) -> int:
        """Drop the least recently used tables until at most `max_bytes` are held (an
        evicted table is parsed again if a sample needs it); returns how many went."""
        dropped = 0
        while self.bytes_held > max_bytes and len(self._by_build_id):
            self._by_build_id.evict_oldest()
            dropped += 1
        return dropped

    @property
    def tables_held(self) -> int:
        """Symbol tables held in memory now."""
        return len(self._by_build_id)

    @property
    def tables_evicted(self) -> int:
        """Symbol tables dropped for room so far."""
        return self._by_build_id.evicted

    def load_path(self, path: str) -> LoadedElf:
        """Symbols of the ELF file at `path`."""
        return self.load(file_opener(path), path)

    def load_bytes(self, image: bytes, name: str) -> LoadedElf:
        """Symbols of an in-memory ELF image (the vDSO)."""
        return self.load(lambda: io.BytesIO(image), name)

    def _debug_symbols(self, debug_file: str) -> list[_RawSymbol]:
        self.files_parsed += 1
        try:
            with open(debug_file, "rb") as stream:
                return list(_function_symbols(ELFFile(stream)))
        except (OSError, ELFError, struct.error):
            return []

    def _find_debug_file(self, info: ElfInfo, path: str) -> str:
        if info.build_id and len(info.build_id) > 2:
            for root in self.debug_roots:
                candidate = os.path.join(
                    root, ".build-id", info.build_id[:2], info.build_id[2:] + ".debug"
                )
                if os.path.isfile(candidate):
                    return candidate
        if info.debuglink:
            for candidate in _debuglink_candidates(path, info.debuglink, self.debug_roots):
                if _debug_file_matches(candidate, info):
                    return candidate
        return ""


def _debuglink_candidates(path: str, link: str, roots: Sequence[str]) -> Iterator[str]:
    directory = os.path.dirname(os.path.abspath(path)) if path.startswith("/") else ""
    if directory:
        yield os.path.join(directory, link)
        yield os.path.join(directory, ".debug", link)
    for root in roots:
        yield os.path.join(root, directory.lstrip("/"), link)


def _debug_file_matches(candidate: str, info: ElfInfo) -> bool:
    try:
        with open(candidate, "rb") as stream:
            other = ELFFile(stream)
            if info.build_id:
                return _build_id_of(other) == info.build_id
            stream.seek(0)
            return _crc32_of(stream) == info.debuglink_crc
    except (OSError, ELFError):
        return False


def _crc32_of(stream: BinaryIO) -> int:
    crc = 0
    while chunk := stream.read(1 << 20):
        crc = zlib.crc32(chunk, crc)
    return crc


def _info_of(elf: ELFFile) -> ElfInfo:
    segments = tuple(
        LoadSegment(seg["p_offset"], seg["p_vaddr"], seg["p_filesz"])
        for seg in elf.iter_segments()
        if seg["p_type"] == _PT_LOAD
    )
    link, crc = _debuglink_of(elf)
    return ElfInfo(
        build_id=_build_id_of(elf),
        debuglink=link,
        debuglink_crc=crc,
        segments=segments,
        shared=elf["e_type"] == "ET_DYN",
    )


def _build_id_of(elf: ELFFile) -> str:
    for source in _note_sources(elf):
        for note in source.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                return str(note["n_desc"])
    return ""


def _note_sources(elf: ELFFile) -> Iterator[Any]:
    named = elf.get_section_by_name(".note.gnu.build-id")
    if named is not None:
        yield named
    notes: list[Any] = [
        s for s in elf.iter_sections() if s["sh_type"] == "SHT_NOTE" and s is not named
    ]
    yield from notes or [s for s in elf.iter_segments() if s["p_type"] == "PT_NOTE"]


def _debuglink_of(elf: ELFFile) -> tuple[str, int]:
    section = elf.get_section_by_name(".gnu_debuglink")
    if section is None:
        return "", 0
    data = section.data()
    name_end = data.find(b"\0")
    if name_end <= 0:
        return "", 0
    crc_at = (name_end + 4) & ~3
    if len(data) < crc_at + 4:
        return "", 0
    (crc,) = struct.unpack_from("<I" if elf.little_endian else ">I", data, crc_at)
    return data[:name_end].decode("utf-8", "replace"), crc


def _function_symbols(elf: ELFFile) -> Iterator[_RawSymbol]:
    """Defined FUNC/IFUNC symbols of .symtab and .dynsym, read straight from the bytes."""
    section_ends = [sec["sh_addr"] + sec["sh_size"] for sec in elf.iter_sections()]
    endian = "<" if elf.little_endian else ">"
    for table_name in (".symtab", ".dynsym"):
        table = elf.get_section_by_name(table_name)
        if table is None or table["sh_type"] == "SHT_NOBITS" or not table["sh_entsize"]:
            continue
        strings = elf.get_section(table["sh_link"]).data()
        for name_at, info, shndx, value, size in _symbol_records(
            table.data(), elf.elfclass, endian
        ):
            kind = info & 0xF
            if kind not in (_STT_FUNC, _STT_GNU_IFUNC) or not value:
                continue
            if shndx == 0 or shndx >= _SHN_LORESERVE:
                continue
            name = strings[name_at : strings.find(b"\0", name_at)]
            if not name:
                continue
            underscores = len(name) - len(name.lstrip(b"_"))
            rank = (underscores, _STB_RANK.get(info >> 4, 3), len(name))
            section_end = section_ends[shndx] if shndx < len(section_ends) else 0
            yield _RawSymbol(value, size, rank, name, section_end)


def _symbol_records(data: bytes, elfclass: int, endian: str) -> Iterator[tuple[int, ...]]:
    """(st_name, st_info, st_shndx, st_value, st_size) per Elf32_Sym/Elf64_Sym record."""
    if elfclass == 64:
        usable = len(data) - len(data) % 24
        for name, info, _other, shndx, value, size in struct.iter_unpack(
            endian + "IBBHQQ", data[:usable]
        ):
            yield name, info, shndx, value, size
    else:
        usable = len(data) - len(data) % 16
        for name, value, size, info, _other, shndx in struct.iter_unpack(
            endian + "IIIBBH", data[:usable]
        ):
            yield name, info, shndx, value, size


def _load_demangler() -> Callable[[str], str] | None:
    try:
        import cxxfilt

        demangler = cxxfilt.Demangler(
            cxxfilt.find_any_library("c"), cxxfilt.find_any_library("stdc++", "c++")
        )
    except Exception:  # no cxxfilt, or no libstdc++ to back it: names stay mangled
        return None
    demangle_name: Callable[[str], str] = demangler.demangle
    return demangle_name


_DEMANGLER = _load_demangler()


@functools.lru_cache(maxsize=65536)
def demangle(name: str) -> str:
    """The demangled C++ name, or `name` unchanged when it is not mangled or cannot be."""
    if _DEMANGLER is None or not name.startswith("_Z"):
        return name
    try:
        return _DEMANGLER(name)
    except Exception:  # an invalid mangling is still a usable name as it is
        return name
