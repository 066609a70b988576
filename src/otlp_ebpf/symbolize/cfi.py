"""Unwind tables from an ELF's call frame information (CFI), compiled to compact sorted arrays.

Sources, in order of preference: the file's `.eh_frame`, its `.debug_frame`, and the
`.debug_frame` of its separate debug file (found by build-id under the debug roots). Every FDE
is decoded with pyelftools once, one entry at a time: an entry pyelftools cannot decode (libc has
one with an opcode it does not know) is skipped and counted, the rest still unwind.

Each row of the compiled table says, for the PCs from its start to the next row's start, how to
find the canonical frame address (CFA) and where the return address and the frame pointer were
saved (offsets from the CFA). Only the rules an unwinder starting from (pc, sp, fp[, lr]) can
evaluate are kept: the CFA as sp/fp + offset, `*(sp/fp + offset)` (stack realignment), and the
x86_64 PLT stub's `DW_CFA_def_cfa_expression`; anything else is marked unsupported and counted
when a sample needs it. FDEs of a CIE with the 'S' augmentation are signal trampolines: the
caller's registers are in the ucontext on the stack.

Decoding is the slow part (libc ~0.6 s, libpython ~1.6 s), so tables are cached in memory and
on disk (`~/.cache/otlp-ebpf/cfi/<build-id>.cfi`, or under $XDG_CACHE_HOME), keyed by
build-id: a table read back from disk loads in milliseconds. The disk cache is capped
(64 MiB, OTLP_EBPF_CFI_CACHE_MB): after each write the least recently used tables (by
modification time, refreshed on every read) go until it fits. A profiler must not stall on a
decode while samples pile up, so `CfiCache(background=True)` hands decodes to a child process
(`DecodeWorker`, this module run with `--decode-worker`) and answers `PENDING` until the table
arrives; the child also writes the disk cache.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple

from elftools.common.exceptions import ELFError
from elftools.dwarf.callframe import CIE, FDE, RegisterRule
from elftools.elf.elffile import ELFFile

from otlp_ebpf.symbolize.allowance import CpuAllowance
from otlp_ebpf.symbolize.elf import DEFAULT_DEBUG_ROOT
from otlp_ebpf.symbolize.lru import Lru

# How the CFA is computed (CfiRow.kind).
CFA_NONE = 0  # no CFI covers this PC
CFA_REG = 1  # CFA = reg + offset
CFA_REG_DEREF = 2  # CFA = *(reg + offset)
CFA_PLT = 3  # x86_64 PLT stub: CFA = sp + 8, + 8 more when (pc & 15) >= offset
CFA_SIGNAL = 4  # signal trampoline: registers are in the ucontext at sp
CFA_UNSUPPORTED = 5  # an expression or base register we cannot evaluate

# The registers an unwinder knows (CfiRow.cfa_reg), as in the BPF sample's regs[].
REG_PC = 0
REG_SP = 1
REG_FP = 2
REG_LR = 3
REG_OTHER = 255

# A saved-register rule that is not "at CFA + offset" (CfiRow.ra / CfiRow.fp).
SAVED_SAME = 0x7FFF_FFF0  # unchanged from the callee (or, for arm64 RA, still in lr)
SAVED_UNDEFINED = 0x7FFF_FFF1  # no caller: for the return address, the outermost frame
SAVED_UNSUPPORTED = 0x7FFF_FFF2  # a rule we cannot evaluate

_CACHE_MAGIC = b"OECFI\x00\x01\x00"
_DW_OP_BREG0 = 0x70
_DW_OP_DEREF = 0x06


@dataclass(frozen=True)
class Arch:
    """DWARF register numbers of one architecture."""

    name: str
    sp: int
    fp: int
    ra: int  # the return-address column


X86_64 = Arch("x86_64", sp=7, fp=6, ra=16)
AARCH64 = Arch("aarch64", sp=31, fp=29, ra=30)
_ARCHES = {"EM_X86_64": X86_64, "EM_AARCH64": AARCH64}
# DW_OP_breg7 (rsp) 8; DW_OP_breg16 (rip) 0; DW_OP_lit15; DW_OP_and; DW_OP_lit<T>; DW_OP_ge;
# DW_OP_lit3; DW_OP_shl; DW_OP_plus — the lazy-binding PLT stub's CFA (T is 10 or 11).
_PLT_HEAD = (0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A)
_PLT_TAIL = (0x2A, 0x33, 0x24, 0x22)


class CfiRow(NamedTuple):
    """The unwind rule for one PC."""

    kind: int
    cfa_reg: int
    cfa_offset: int
    ra: int  # offset from the CFA where the return address is saved, or a SAVED_* value
    fp: int  # offset from the CFA where the frame pointer is saved, or a SAVED_* value


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD program header: file bytes [offset, offset+filesz) load at vaddr."""

    offset: int
    vaddr: int
    filesz: int


@dataclass
class CfiTable:
    """Unwind rows of one ELF, sorted by PC (ELF virtual addresses)."""

    arch: str
    build_id: str
    segments: tuple[Segment, ...]
    starts: array[int] = field(default_factory=lambda: array("Q"))
    kinds: array[int] = field(default_factory=lambda: array("B"))
    cfa_regs: array[int] = field(default_factory=lambda: array("B"))
    cfa_offsets: array[int] = field(default_factory=lambda: array("i"))
    ras: array[int] = field(default_factory=lambda: array("i"))
    fps: array[int] = field(default_factory=lambda: array("i"))
    entries: int = 0  # FDEs decoded
    failures: int = 0  # FDEs pyelftools could not decode (skipped)

    def __len__(self) -> int:
        return len(self.starts)

    def find(self, vaddr: int) -> CfiRow | None:
        """The rule covering ELF address `vaddr`, or None where no CFI covers it."""
        index = bisect.bisect_right(self.starts, vaddr) - 1
        if index < 0 or self.kinds[index] == CFA_NONE:
            return None
        return CfiRow(
            self.kinds[index],
            self.cfa_regs[index],
            self.cfa_offsets[index],
            self.ras[index],
            self.fps[index],
        )

    def vaddr_for_offset(self, file_offset: int) -> int | None:
        """The ELF virtual address of file byte `file_offset`, if a PT_LOAD segment loads it."""
        for seg in self.segments:
            if seg.offset <= file_offset < seg.offset + seg.filesz:
                return seg.vaddr + (file_offset - seg.offset)
        return None

    def append(self, start: int, row: CfiRow) -> None:
        self.starts.append(start)
        self.kinds.append(row.kind)
        self.cfa_regs.append(row.cfa_reg)
        self.cfa_offsets.append(_clamp_i32(row.cfa_offset))
        self.ras.append(_clamp_i32(row.ra))
        self.fps.append(_clamp_i32(row.fp))

    def to_bytes(self) -> bytes:
        """The on-disk form: magic, a JSON header, then the arrays' raw bytes."""
        header = json.dumps(
            {
                "arch": self.arch,
                "build_id": self.build_id,
                "segments": [[s.offset, s.vaddr, s.filesz] for s in self.segments],
                "rows": len(self.starts),
                "entries": self.entries,
                "failures": self.failures,
            }
        ).encode()
        parts = [_CACHE_MAGIC, struct.pack("<I", len(header)), header]
        parts.extend(a.tobytes() for a in self._arrays())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> CfiTable:
        """Read back `to_bytes`; ValueError when the data is not a table of this version."""
        if not data.startswith(_CACHE_MAGIC) or len(data) < len(_CACHE_MAGIC) + 4:
            raise ValueError("not a CFI cache file of this version")
        at = len(_CACHE_MAGIC)
        (header_len,) = struct.unpack_from("<I", data, at)
        at += 4
        meta = json.loads(data[at : at + header_len])
        at += header_len
        table = cls(
            arch=meta["arch"],
            build_id=meta["build_id"],
            segments=tuple(Segment(*s) for s in meta["segments"]),
            entries=meta["entries"],
            failures=meta["failures"],
        )
        rows = int(meta["rows"])
        for arr in table._arrays():
            size = rows * arr.itemsize
            if at + size > len(data):
                raise ValueError("truncated CFI cache file")
            arr.frombytes(data[at : at + size])
            at += size
        return table

    def _arrays(self) -> tuple[array[int], ...]:
        return (self.starts, self.kinds, self.cfa_regs, self.cfa_offsets, self.ras, self.fps)


def _clamp_i32(value: int) -> int:
    return max(-(2**31), min(2**31 - 1, value))


# -- building a table from ELF bytes ---------------------------------------------------------


@dataclass
class _Fde:
    start: int
    end: int
    priority: int
    rows: list[tuple[int, CfiRow]]


def build_table(elf: ELFFile, debug_elf: ELFFile | None = None) -> CfiTable:
    """Decode every FDE of `elf` (and the .debug_frame of `debug_elf`) into one table."""
    arch = _ARCHES.get(elf["e_machine"])
    table = CfiTable(
        arch=arch.name if arch else str(elf["e_machine"]),
        build_id=build_id_of(elf),
        segments=_segments_of(elf),
    )
    if arch is None:
        return table
    fdes: list[_Fde] = []
    for priority, entries in enumerate(_cfi_sources(elf, debug_elf)):
        for entry in entries:
            if not isinstance(entry, FDE):
                continue
            try:
                fdes.append(_compile_fde(entry, arch, priority))
                table.entries += 1
            except MemoryError:
                raise  # not a bad entry: a table missing entries must not be kept
            except Exception:  # pyelftools raises assorted errors on entries it cannot decode
                table.failures += 1
    _fill_rows(table, fdes)
    return table


def _cfi_sources(elf: ELFFile, debug_elf: ELFFile | None) -> Iterator[list[Any]]:
    """CFI entry lists, most trusted first; a section pyelftools cannot parse is left out."""
    candidates: list[tuple[ELFFile, bool]] = [(elf, True), (elf, False)]
    if debug_elf is not None:
        candidates.append((debug_elf, False))
    for source, eh in candidates:
        try:
            dwarf = source.get_dwarf_info(relocate_dwarf_sections=False)
            if eh and dwarf.has_EH_CFI():
                yield dwarf.EH_CFI_entries()
            elif not eh and dwarf.has_CFI():
                yield dwarf.CFI_entries()
        except MemoryError:
            raise
        except Exception:  # a malformed section: the others still count
            continue


def _compile_fde(fde: FDE, arch: Arch, priority: int) -> _Fde:
    start = int(fde.header["initial_location"])
    end = start + int(fde.header["address_range"])
    cie = fde.cie
    signal = isinstance(cie, CIE) and b"S" in bytes(cie.header.get("augmentation") or b"")
    decoded = fde.get_decoded()
    rows: list[tuple[int, CfiRow]] = []
    for raw in decoded.table:
        row = _signal_row() if signal else _row_of(raw, arch)
        pc = int(raw["pc"])
        if rows and rows[-1][0] == pc:
            rows[-1] = (pc, row)
        else:
            rows.append((pc, row))
    if not rows:
        rows.append((start, _signal_row() if signal else CfiRow(CFA_UNSUPPORTED, 0, 0, 0, 0)))
    return _Fde(start, end, priority, rows)


def _signal_row() -> CfiRow:
    return CfiRow(CFA_SIGNAL, REG_SP, 0, SAVED_UNSUPPORTED, SAVED_UNSUPPORTED)


def _row_of(raw: dict[Any, Any], arch: Arch) -> CfiRow:
    kind, reg, offset = _cfa_of(raw["cfa"], arch)
    return CfiRow(
        kind,
        reg,
        offset,
        _saved(raw.get(arch.ra), default=SAVED_UNSUPPORTED if arch is X86_64 else SAVED_SAME),
        _saved(raw.get(arch.fp), default=SAVED_SAME),
    )


def _cfa_of(rule: Any, arch: Arch) -> tuple[int, int, int]:
    if rule.expr is None:
        reg = _our_reg(rule.reg, arch)
        if reg == REG_OTHER or rule.offset is None:
            return CFA_UNSUPPORTED, REG_OTHER, 0
        return CFA_REG, reg, int(rule.offset)
    expr = tuple(rule.expr)
    if (
        arch is X86_64
        and len(expr) == len(_PLT_HEAD) + 1 + len(_PLT_TAIL)
        and expr[: len(_PLT_HEAD)] == _PLT_HEAD
        and expr[len(_PLT_HEAD) + 1 :] == _PLT_TAIL
        and 0x30 <= expr[len(_PLT_HEAD)] <= 0x4F
    ):
        return CFA_PLT, REG_SP, expr[len(_PLT_HEAD)] - 0x30
    if len(expr) >= 3 and _DW_OP_BREG0 <= expr[0] < _DW_OP_BREG0 + 32 and expr[-1] == _DW_OP_DEREF:
        reg = _our_reg(expr[0] - _DW_OP_BREG0, arch)
        offset, used = _sleb128(expr, 1)
        if reg != REG_OTHER and used == len(expr) - 1:
            return CFA_REG_DEREF, reg, offset
    return CFA_UNSUPPORTED, REG_OTHER, 0


def _our_reg(dwarf_reg: int | None, arch: Arch) -> int:
    if dwarf_reg == arch.sp:
        return REG_SP
    if dwarf_reg == arch.fp:
        return REG_FP
    return REG_OTHER


def _saved(rule: Any, *, default: int) -> int:
    if rule is None:
        return default
    if rule.type == RegisterRule.OFFSET:
        return int(rule.arg)
    if rule.type == RegisterRule.UNDEFINED:
        return SAVED_UNDEFINED
    if rule.type == RegisterRule.SAME_VALUE:
        return SAVED_SAME
    return SAVED_UNSUPPORTED


def _sleb128(data: Sequence[int], at: int) -> tuple[int, int]:
    """Decode a signed LEB128 at `at`; (value, index after it)."""
    result = shift = 0
    while at < len(data):
        byte = data[at]
        at += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if byte & 0x40:
                result -= 1 << shift
            break
    return result, at


def _fill_rows(table: CfiTable, fdes: list[_Fde]) -> None:
    """Rows of non-overlapping FDEs in PC order, with a no-CFI row in every gap."""
    fdes.sort(key=lambda f: (f.start, f.priority))
    covered_to = -1
    for index, fde in enumerate(fdes):
        if fde.start < covered_to or fde.end <= fde.start:
            continue  # a duplicate (debug_frame of code eh_frame covers) or an empty FDE
        for pc, row in fde.rows:
            if fde.start <= pc < fde.end:
                if table.starts and table.starts[-1] == pc:
                    _replace_last(table, pc, row)
                else:
                    table.append(pc, row)
        covered_to = fde.end
        following = fdes[index + 1].start if index + 1 < len(fdes) else None
        if following != fde.end:
            table.append(fde.end, CfiRow(CFA_NONE, 0, 0, 0, 0))


def _replace_last(table: CfiTable, pc: int, row: CfiRow) -> None:
    for arr in table._arrays():
        arr.pop()
    table.append(pc, row)


def _segments_of(elf: ELFFile) -> tuple[Segment, ...]:
    return tuple(
        Segment(seg["p_offset"], seg["p_vaddr"], seg["p_filesz"])
        for seg in elf.iter_segments()
        if seg["p_type"] == "PT_LOAD"
    )


def build_id_of(elf: ELFFile) -> str:
    """The GNU build-id of an ELF as hex, or "" when it has none."""
    sources: list[Any] = [s for s in elf.iter_sections() if s["sh_type"] == "SHT_NOTE"]
    if not sources:
        sources = [s for s in elf.iter_segments() if s["p_type"] == "PT_NOTE"]
    for source in sources:
        with contextlib.suppress(ELFError, struct.error):
            for note in source.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                    return str(note["n_desc"])
    return ""


# -- the cache -------------------------------------------------------------------------------


def default_cache_dir() -> str:
    """Where decoded tables are kept between runs ($XDG_CACHE_HOME or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "otlp-ebpf", "cfi")


@dataclass
class CfiCacheStats:
    """How tables were obtained over a run."""

    decoded: int = 0  # built from the ELF (the slow path)
    from_disk: int = 0
    from_memory: int = 0
    unreadable: int = 0  # files that could not be parsed at all
    fde_failures: int = 0  # FDEs skipped in decoded tables


class Pending:
    """The answer for a table still being decoded in the background."""

    def __repr__(self) -> str:
        return "PENDING"


PENDING = Pending()


DISK_CACHE_MB_DEFAULT = 64
DISK_CACHE_ENV = "OTLP_EBPF_CFI_CACHE_MB"


def disk_cache_cap_bytes() -> int:
    """The disk cache's size cap: OTLP_EBPF_CFI_CACHE_MB when a number >= 0, else 64 MiB."""
    try:
        mb = float(os.environ.get(DISK_CACHE_ENV, "") or DISK_CACHE_MB_DEFAULT)
    except ValueError:
        mb = DISK_CACHE_MB_DEFAULT
    if not 0 <= mb < 1 << 40:  # negative, NaN or absurd: the default
        mb = DISK_CACHE_MB_DEFAULT
    return int(mb * 1024 * 1024)


# The decoding child's memory. pyelftools holds every FDE of a file while it decodes it: a
# compiler's 35 MB binary took the child past 1 GB. Its heap is capped (RLIMIT_DATA, set by
# the child itself; OTLP_EBPF_DECODER_MAX_MB): a file that needs more is left without a table
# (its frames unwind as far as frame pointers go) and the child is replaced. A child that
# holds more than RECYCLE_RSS_KB after a decode (freed memory Python keeps) is replaced too.
DECODER_MAX_MB_DEFAULT = 768
DECODER_MAX_MB_ENV = "OTLP_EBPF_DECODER_MAX_MB"
RECYCLE_RSS_KB = 256 * 1024
READ_CHUNK = 1 << 20  # bytes read from the decoding child at a time
MAX_WORKER_STARTS = 64  # a child that keeps dying is not started again past this
DECODER_IDLE_ENV = "OTLP_EBPF_DECODER_IDLE"  # set for the child by DecodeWorker.idle
# DecodeWorker.allowance: the child may run ahead of its average by this much CPU (a library
# of a few MB decodes at once), then it is paused until its average is back under.
PACE_AHEAD_S = 2.0
PACE_EVERY_S = 0.25


def decoder_cap_bytes() -> int:
    """The decoding child's heap cap: OTLP_EBPF_DECODER_MAX_MB when a positive number, else
    768 MiB."""
    try:
        mb = float(os.environ.get(DECODER_MAX_MB_ENV, "") or DECODER_MAX_MB_DEFAULT)
    except ValueError:
        mb = DECODER_MAX_MB_DEFAULT
    if not 0 < mb < 1 << 30:
        mb = DECODER_MAX_MB_DEFAULT
    return int(mb * 1024 * 1024)


def prune_disk_cache(cache_dir: str, cap_bytes: int, keep: str = "") -> int:
    """Delete the least recently used `*.cfi` tables (oldest modification time first) until
    the directory's tables fit in `cap_bytes`; `keep` (the table just written) stays.
    Returns how many were deleted."""
    entries = []
    with contextlib.suppress(OSError), os.scandir(cache_dir) as listing:
        for entry in listing:
            if entry.name.endswith(".cfi") and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    entries.append((st.st_mtime_ns, entry.path, st.st_size))
    total = sum(size for _, _, size in entries)
    deleted = 0
    for _, path, size in sorted(entries):
        if total <= cap_bytes:
            break
        if path == keep:
            continue
        with contextlib.suppress(OSError):
            os.unlink(path)
            total -= size
            deleted += 1
    return deleted


# Files whose cache key (or failure to decode) is remembered.
MAX_KNOWN_FILES = 4096

# Rows of unwind tables kept in memory (~24 bytes each): libc has ~29,000, libpython ~74,000.
# A host that builds and runs new binaries all day would otherwise keep every table it met.
# The tables of live processes stay with their unwinders whatever this cache forgets, and one
# read back from the disk cache takes ~2 ms: 500,000 rows (~12 MB) fill within a minute on a
# busy host and then stay put.
MEMORY_CACHE_ROWS = 500_000


class TableLru:
    """Tables by key, least recently used evicted once their rows pass `max_rows` (a table in
    use by a process's unwinder stays alive there; only the cache forgets it)."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.rows = 0
        self._tables: OrderedDict[str, CfiTable] = OrderedDict()

    def get(self, key: str) -> CfiTable | None:
        table = self._tables.get(key)
        if table is not None:
            self._tables.move_to_end(key)
        return table

    def put(self, key: str, table: CfiTable) -> None:
        old = self._tables.pop(key, None)
        if old is not None:
            self.rows -= len(old)
        self._tables[key] = table
        self.rows += len(table)
        while self.rows > self.max_rows and len(self._tables) > 1:
            _, evicted = self._tables.popitem(last=False)
            self.rows -= len(evicted)

    def trim(self, max_rows: int) -> int:
        """Evict the least recently used tables until at most `max_rows` rows are held;
        returns how many went."""
        dropped = 0
        while self.rows > max_rows and self._tables:
            _, evicted = self._tables.popitem(last=False)
            self.rows -= len(evicted)
            dropped += 1
        return dropped

    def __contains__(self, key: str) -> bool:
        return key in self._tables

    def __len__(self) -> int:
        return len(self._tables)


class CfiCache:
    """Unwind tables per build-id, decoded at most once per machine (when `cache_dir` is set).

    `cache_dir=None` keeps tables in memory only. `debug_roots` are searched for separate debug
    files (`<root>/.build-id/xx/rest.debug`) whose `.debug_frame` fills what `.eh_frame` lacks.
    With `background=True`, `lookup_path` never decodes in this process: see DecodeWorker.
    """

    def __init__(
        self,
        cache_dir: str | None = None,
        debug_roots: Iterable[str] = (DEFAULT_DEBUG_ROOT,),
        *,
        background: bool = False,
    ) -> None:
        self.cache_dir = cache_dir
        self.disk_cap_bytes = disk_cache_cap_bytes()
        self.debug_roots = tuple(debug_roots)
        self.stats = CfiCacheStats()
        self._by_build_id = TableLru(MEMORY_CACHE_ROWS)
        self.memory_rows = MEMORY_CACHE_ROWS
        self.worker = DecodeWorker(cache_dir, self.debug_roots) if background else None
        # (device, inode, size, mtime) of a file -> its cache key (build-id, or that identity):
        # not its path, which names a descriptor that may be closed and its number reused.
        self._keys: Lru[tuple[int, int, int, int], str] = Lru(MAX_KNOWN_FILES)
        self._failed: Lru[str, bool] = Lru(MAX_KNOWN_FILES)

    def __len__(self) -> int:
        """Unwind tables held in memory now."""
        return len(self._by_build_id)

    @property
    def rows_held(self) -> int:
        """Rows of the unwind tables held in memory now."""
        return self._by_build_id.rows

    def trim(self, max_rows: int) -> int:
        """Forget the least recently used tables until at most `max_rows` rows are held in
        memory (they come back from the disk cache when needed); returns how many went."""
        return self._by_build_id.trim(max_rows)

    def lookup_path(
        self,
        path: str,
        *,
        urgent: bool = True,
        identity: tuple[int, int, int, int] | None = None,
    ) -> CfiTable | Pending | None:
        """The table of `path` if it is at hand (memory or disk); otherwise, with a background
        worker, ask for it and answer PENDING (without one, decode it now). `identity`, the
        file's (device, inode, size, mtime) when the caller knows it, spares a stat."""
        if self.worker is None:
            return self.table_for_path(path)
        key = self._key_of(path, identity)
        if key is None or self._failed.get(key):
            return None
        table = self._cached(key)
        if table is not None:
            return table
        self.worker.request(key, path, urgent=urgent)
        return PENDING

    def receive(self, timeout_s: float = 0.0) -> int:
        """Take the tables the worker finished (waiting up to `timeout_s` for the first one);
        returns how many arrived."""
        if self.worker is None:
            return 0
        arrived = 0
        for key, data in self.worker.receive(timeout_s):
            arrived += 1
            table = _table_or_none(data)
            if table is None:
                self._failed[key] = True
                self.stats.unreadable += 1
                continue
            self.stats.decoded += 1
            self.stats.fde_failures += table.failures
            self._by_build_id.put(key, table)
        return arrived

    def close(self) -> None:
        """Stop the background worker, if any (a decode in progress is abandoned)."""
        if self.worker is not None:
            self.worker.close()

    def _key_of(self, path: str, identity: tuple[int, int, int, int] | None = None) -> str | None:
        if identity is None:
            try:
                st = os.stat(path)
            except OSError:
                self.stats.unreadable += 1
                return None
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        key = self._keys.get(identity)
        if key is None:
            try:
                with open(path, "rb") as stream:
                    key = build_id_of(ELFFile(stream)) or "file:{}:{}:{}:{}".format(*identity)
            except (OSError, ELFError, struct.error, ValueError):
                self.stats.unreadable += 1
                return None
            self._keys[identity] = key
        return key

    def table_for_path(self, path: str) -> CfiTable | None:
        """The table of the ELF file at `path`; None when it cannot be read as ELF."""
        return self.table_for(lambda: open(path, "rb"))

    def table_for_image(self, image: bytes) -> CfiTable | None:
        """The table of an in-memory ELF image (the vDSO read from a process)."""
        return self.table_for(lambda: io.BytesIO(image))

    def table_for(self, opener: Callable[[], BinaryIO]) -> CfiTable | None:
        """The table of the ELF that `opener` opens (cached by build-id)."""
        try:
            with opener() as stream:
                elf = ELFFile(stream)
                build_id = build_id_of(elf)
                cached = self._cached(build_id)
                if cached is not None:
                    return cached
                table = self._decode(elf, build_id)
        except (OSError, ELFError, struct.error, ValueError):
            self.stats.unreadable += 1
            return None
        if build_id:
            if self.memory_rows:
                self._by_build_id.put(build_id, table)
            self._store(table)
        return table

    def _cached(self, build_id: str) -> CfiTable | None:
        if not build_id:
            return None
        table = self._by_build_id.get(build_id)
        if table is not None:
            self.stats.from_memory += 1
            return table
        table = self._load(build_id) if build_id.isalnum() else None
        if table is not None:
            self.stats.from_disk += 1
            if self.memory_rows:
                self._by_build_id.put(build_id, table)
        return table

    def _decode(self, elf: ELFFile, build_id: str) -> CfiTable:
        debug_path = self._debug_file(build_id)
        self.stats.decoded += 1
        if debug_path:
            with open(debug_path, "rb") as debug_stream:
                table = build_table(elf, _elf_or_none(debug_stream))
        else:
            table = build_table(elf)
        self.stats.fde_failures += table.failures
        return table

    def _debug_file(self, build_id: str) -> str:
        if len(build_id) <= 2:
            return ""
        for root in self.debug_roots:
            candidate = os.path.join(root, ".build-id", build_id[:2], build_id[2:] + ".debug")
            if os.path.isfile(candidate):
                return candidate
        return ""

    def _cache_path(self, build_id: str) -> str | None:
        if not self.cache_dir or not build_id.isalnum():
            return None
        return os.path.join(self.cache_dir, f"{build_id}.cfi")

    def _load(self, build_id: str) -> CfiTable | None:
        path = self._cache_path(build_id)
        if path is None:
            return None
        try:
            with open(path, "rb") as fh:
                table = CfiTable.from_bytes(fh.read())
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if table.build_id != build_id:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: the last to be evicted
        return table

    def _store(self, table: CfiTable) -> None:
        path = self._cache_path(table.build_id)
        if path is None:
            return
        # A cache we cannot write (read-only home) only costs the next run the decode time.
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(table.to_bytes())
                os.replace(tmp, path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            prune_disk_cache(os.path.dirname(path), self.disk_cap_bytes, keep=path)


def _table_or_none(data: bytes | None) -> CfiTable | None:
    if data is None:
        return None
    try:
        return CfiTable.from_bytes(data)
    except (ValueError, KeyError, TypeError):
        return None


# -- decoding in a child process ---------------------------------------------------------------

WORKER_FLAG = "--decode-worker"


class DecodeWorker:
    """A child process that decodes unwind tables, one at a time, most urgent first.

    The profiler's process stays small and responsive: it sends a path, goes on with its work,
    and picks the table up when `receive` finds it ready. The child is started at the first
    request, so runs whose tables are all cached never start it. Paths of files this process
    holds open (`/proc/self/fd/N`) are passed as `/proc/<our pid>/fd/N`. Its memory is bounded
    (see RECYCLE_RSS_KB): a child over the bound after a decode, or that ran out of its heap
    cap or died in one (that file is then answered without a table), is replaced by a new one
    at the next request.
    """

    def __init__(self, cache_dir: str | None, debug_roots: Sequence[str]) -> None:
        self.cache_dir = cache_dir
        self.debug_roots = tuple(debug_roots)
        self.cpu_s = 0.0  # the children's CPU time, each read when it ends
        self.peak_rss_kb = 0  # the highest of the children's
        self.starts = 0
        self.recycled = 0  # children replaced for their memory (or a decode that died)
        self.pid = 0  # the child's pid once started (the profile leaves it out)
        self.recycle_rss_kb = RECYCLE_RSS_KB
        # Decode with idle CPU only (SCHED_IDLE): for a long run held to a budget, where a
        # binary of tens of MB (a minute of CPU to decode) must not take the workload's CPU;
        # its tables come later on a busy host. Off for short runs, which need them now.
        self.idle = False
        # At most `allowance.pct` % of one core on average (0: no limit), plus the credit
        # deposited in it (the agent: what its budget left unspent): the child is stopped
        # (SIGSTOP) while it has spent more, so a run under a budget pays for its decodes
        # over time. One allowance for all the children: a new one starts with no new credit.
        self.allowance = CpuAllowance(0.0, PACE_AHEAD_S)
        self.paused_s = 0.0  # time the child spent stopped for it
        self._pace_mark: tuple[float, float] | None = None  # (checked at, the child's CPU)
        self._paused_at: float | None = None
        self._closed = False
        self._recycle = False  # the child asked to be replaced (out of its heap cap)
        self._proc: subprocess.Popen[bytes] | None = None
        self._todo: list[tuple[int, int, str, str]] = []  # (0 urgent / 1 prefetch, seq, key, path)
        self._asked: dict[str, int] = {}  # key -> priority of its queued request
        self._in_flight: str | None = None
        self._seq = 0
        self._received = bytearray()  # the child's output not yet taken as a result

    @property
    def started(self) -> bool:
        """A child was started at least once."""
        return self.starts > 0

    def rss_kb(self) -> int:
        """Resident memory of the child now (0: none running)."""
        proc = self._proc
        return _rss_kb(proc.pid) if proc is not None else 0

    @property
    def busy(self) -> bool:
        """A decode is running or queued."""
        return self._in_flight is not None or bool(self._todo)

    def pending_urgent(self) -> int:
        """Urgent decodes not finished yet (the running one included)."""
        return int(self._in_flight is not None) + sum(1 for t in self._todo if t[0] == 0)

    def request(self, key: str, path: str, *, urgent: bool) -> None:
        """Queue a decode unless it is queued or running; an urgent ask moves it forward."""
        priority = 0 if urgent else 1
        if key == self._in_flight or self._asked.get(key, 2) <= priority:
            return
        self._todo = [t for t in self._todo if t[2] != key]
        self._seq += 1
        self._todo.append((priority, self._seq, key, _shareable_path(path)))
        self._todo.sort()
        self._asked[key] = priority
        self._send_next()

    def receive(self, timeout_s: float = 0.0) -> list[tuple[str, bytes | None]]:
        """Finished decodes as (key, table bytes or None), waiting up to `timeout_s`.

        Never blocks past it: the child's output is read as it comes, without waiting for the
        rest of a table (a child stopped by `pace`, or starved of CPU at SCHED_IDLE, may stop
        in the middle of one); what came so far waits for the next call."""
        self.pace()
        done: list[tuple[str, bytes | None]] = []
        deadline = time.monotonic() + timeout_s
        while self._proc is not None and self._in_flight is not None:
            result = self._buffered_result()
            if result is None:
                wait = max(0.0, deadline - time.monotonic()) if not done else 0.0
                stdout = self._proc.stdout
                assert stdout is not None
                ready, _, _ = select.select([stdout], [], [], wait)
                if not ready:
                    break
                if self._read_available(stdout.fileno()):
                    continue
                result = self._child_ended()
            done.append(result)
            died = result[1] is None and self._proc is None  # the next decode: a new child
            if not died and (self._recycle or self.rss_kb() > self.recycle_rss_kb):
                self.recycled += 1
                self._end_child()
            self._send_next()
        return done

    def pace(self) -> None:
        """Hold the child to its allowance: it is stopped while it has used more CPU than it
        was given (up to PACE_AHEAD_S ahead), and runs again once the credit is back."""
        proc = self._proc
        if proc is None or not self.allowance.pct:
            return
        now = time.monotonic()
        mark = self._pace_mark
        if mark is not None and now - mark[0] < PACE_EVERY_S:
            return
        used = _cpu_s(proc.pid)
        self.allowance.spend(used - mark[1] if mark is not None else used)
        self._pace_mark = (now, used)
        ahead = self.allowance.available()
        if not ahead and self._paused_at is None:
            self._signal(proc.pid, signal.SIGSTOP)
            self._paused_at = now
        elif ahead and self._paused_at is not None:
            self._resume(proc.pid)

    def _resume(self, pid: int) -> None:
        if self._paused_at is not None:
            self.paused_s += time.monotonic() - self._paused_at
            self._paused_at = None
            self._signal(pid, signal.SIGCONT)

    @staticmethod
    def _signal(pid: int, signum: int) -> None:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)

    def close(self) -> None:
        """End the child now, recording what it cost; no child is started after this."""
        self._closed = True
        self._todo.clear()
        self._in_flight = None
        self._end_child()

    def _end_child(self) -> None:
        """End the child (between two decodes, or dead), adding what it cost."""
        proc, self._proc = self._proc, None
        self._recycle = False
        self._received.clear()
        if proc is None:
            return
        used = self._record_cost(proc.pid)
        if self._pace_mark is not None:  # what it used since it was last paced is paid too
            self.allowance.spend(max(0.0, used - self._pace_mark[1]))
            self._pace_mark = None
        self._resume(proc.pid)
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _send_next(self) -> None:
        if self._in_flight is not None or not self._todo:
            return
        proc = self._ensure_started()
        if proc is None:
            return
        _, _, key, path = self._todo.pop(0)
        self._asked.pop(key, None)
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps({"key": key, "path": path}).encode() + b"\n")
            proc.stdin.flush()
        except OSError:
            self._end_child()  # died between two decodes: this one goes to the next child
            self._todo.insert(0, (0, 0, key, path))
            self._asked[key] = 0
            self._send_next()
            return
        self._in_flight = key

    def _ensure_started(self) -> subprocess.Popen[bytes] | None:
        if self._proc is None and not self._closed and self.starts < MAX_WORKER_STARTS:
            self.starts += 1
            argv = [sys.executable, "-m", __name__, WORKER_FLAG, self.cache_dir or ""]
            self._proc = subprocess.Popen(
                [*argv, *self.debug_roots],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                env={**os.environ, DECODER_IDLE_ENV: "1"} if self.idle else None,
            )
            self.pid = self._proc.pid
            assert self._proc.stdout is not None
            os.set_blocking(self._proc.stdout.fileno(), False)  # `receive` never waits on it
        return self._proc

    def _read_available(self, fd: int) -> bool:
        """Add what the child has written to the buffer; False at its end (it died)."""
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        self._received += chunk
        return bool(chunk)

    def _buffered_result(self) -> tuple[str, bytes | None] | None:
        """The decode in flight once its header line and whole table are in the buffer, else
        None; a header that does not parse ends the child (the file is answered without a
        table)."""
        end = self._received.find(b"\n")
        if end < 0:
            return None
        try:
            header = json.loads(self._received[:end])
            size = int(header["size"])
            key = str(header["key"])
        except (ValueError, KeyError, TypeError):
            return self._child_ended()
        if len(self._received) < end + 1 + max(size, 0):
            return None
        data = bytes(self._received[end + 1 : end + 1 + size]) if size >= 0 else None
        del self._received[: end + 1 + max(size, 0)]
        self._in_flight = None
        self._recycle = bool(header.get("recycle"))
        return key, data

    def _child_ended(self) -> tuple[str, bytes | None]:
        """The one in flight without a table when the child died in it (killed for its
        memory, say): that file is not asked again."""
        key = self._in_flight or ""
        self._in_flight = None
        self.recycled += 1
        self._end_child()
        return key, None

    def _record_cost(self, pid: int) -> float:
        """Add the ending child's CPU and peak RSS to the totals; returns its CPU seconds."""
        used = _cpu_s(pid)
        self.cpu_s += used
        with (
            contextlib.suppress(OSError, ValueError, IndexError),
            open(f"/proc/{pid}/status") as fh,
        ):
            for line in fh:
                if line.startswith("VmHWM:"):
                    self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))
        return used


def _cpu_s(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _shareable_path(path: str) -> str:
    prefix = "/proc/self/"
    return f"/proc/{os.getpid()}/{path[len(prefix) :]}" if path.startswith(prefix) else path


def worker_main(argv: Sequence[str]) -> int:
    """The child's loop: one JSON request a line in, a JSON header line and the table out.
    A decode that runs out of the heap cap is answered without a table and ends the child
    (what it freed is fragmented): the parent starts another for the next request."""
    _die_with_parent()
    _cap_heap(decoder_cap_bytes())
    _yield_cpu()
    cache = CfiCache(argv[0] or None, argv[1:])
    # Tables go to the parent, which keeps them: kept here too, they only grew this process.
    cache.memory_rows = 0
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        request = json.loads(line)
        header: dict[str, Any] = {"key": request["key"], "size": -1}
        data = b""
        try:
            table = cache.table_for_path(str(request["path"]))
            if table is not None:
                data = table.to_bytes()
                header["size"] = len(data)
        except MemoryError:
            header["size"], data = -1, b""
            header["recycle"] = True
        _write_all(out, json.dumps(header).encode() + b"\n" + data)
        if header.get("recycle"):
            return 0
    return 0


def _write_all(out: BinaryIO, data: bytes) -> None:
    """Write all of `data`: a pipe write interrupted by a stop and continue (`pace`) returns
    short, and the buffered writer passes the short count on instead of writing the rest."""
    view = memoryview(data)
    while view:
        view = view[out.write(view) :]
    out.flush()


def _die_with_parent() -> None:
    """Killed with the parent, even while stopped by `DecodeWorker.pace` (a stopped child
    would not see its input close)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _yield_cpu() -> None:
    """With DECODER_IDLE_ENV set (`DecodeWorker.idle`), decode only with CPU time nothing
    else wants (SCHED_IDLE)."""
    if os.environ.get(DECODER_IDLE_ENV) != "1":
        return
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _cap_heap(cap_bytes: int) -> None:
    """Cap this process's heap (brk and private anonymous mappings) at `cap_bytes`."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = cap_bytes if hard == resource.RLIM_INFINITY else min(cap_bytes, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _elf_or_none(stream: BinaryIO) -> ELFFile | None:
    try:
        return ELFFile(stream)
    except (ELFError, struct.error):
        return None


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == WORKER_FLAG:
    sys.exit(worker_main(sys.argv[2:]))
