"""Walk a user stack from a sample's registers and a copy of the top of its stack.

Each frame is unwound with the CFI of the mapping its PC falls in (symbolize/cfi.py): the
canonical frame address (CFA) comes from sp or the frame pointer, the return address and the
caller's frame pointer are read from the copied stack at their CFA offsets. Where a mapping has
no CFI (JIT code, /tmp/perf-PID.map regions, hand-written assembly) the walk falls back to the
frame-pointer chain for that frame, when allowed. A PC in a signal trampoline (an FDE of a CIE
with the 'S' augmentation, glibc's `__restore_rt` on x86_64) continues in the interrupted code,
whose registers are read from the ucontext the kernel pushed. The vDSO unwinds like any file,
with the ELF image read from the process when its maps were captured.

The walk ends cleanly at the outermost frame (a return-address rule of "undefined", as `_start`
and new threads have, a zero return address, or a zero frame pointer in code without CFI).
Anything else that stops it early gives a reason, counted by the caller; `truncated` is set when
the stack copy ended before the walk did while the stack itself went on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from otlp_ebpf.symbolize.cfi import (
    CFA_PLT,
    CFA_REG,
    CFA_REG_DEREF,
    CFA_SIGNAL,
    REG_FP,
    REG_SP,
    SAVED_SAME,
    SAVED_UNDEFINED,
    SAVED_UNSUPPORTED,
    CfiCache,
    CfiRow,
    CfiTable,
    Pending,
)
from otlp_ebpf.symbolize.procmaps import Mapping, OpenFiles, ProcessMaps

MAX_FRAMES = 128

# Why a walk stopped early (UnwindResult.reason); None means it reached the outermost frame.
REASON_NO_MAPPING = "pc_not_mapped"
REASON_NO_CFI = "no_cfi"
REASON_UNSUPPORTED_CFA = "unsupported_cfa_rule"
REASON_UNSUPPORTED_RA = "unsupported_ra_rule"
REASON_FP_UNKNOWN = "frame_pointer_unknown"
REASON_FP_INVALID = "frame_pointer_invalid"
REASON_WINDOW = "stack_window_exhausted"
REASON_BAD_READ = "read_outside_stack"
REASON_NO_PROGRESS = "no_progress"
REASON_MAX_DEPTH = "max_depth"
REASON_SIGNAL_ARCH = "signal_frame_unsupported_arch"
REASON_NO_USER_REGS = "no_user_registers"
# The table of a frame's mapping is still being decoded: the caller may walk again later.
REASON_TABLE_PENDING = "table_not_ready"

# x86_64 rt_sigframe: at __restore_rt, sp points at the ucontext; uc_mcontext.gregs starts at
# byte 40 (uc_flags, uc_link, uc_stack) with REG_RBP = 10, REG_RSP = 15, REG_RIP = 16.
_UC_GREGS = 40
_UC_RBP = _UC_GREGS + 10 * 8
_UC_RSP = _UC_GREGS + 15 * 8
_UC_RIP = _UC_GREGS + 16 * 8

STATUS_CFI = "cfi"
STATUS_NO_CFI = "no_cfi"
STATUS_NO_MAPPING = "no_mapping"
STATUS_PENDING = "pending"


class Regs(NamedTuple):
    """User registers a walk starts from (the BPF sample's regs[]): pc, sp, fp and, on arm64,
    the link register."""

    pc: int
    sp: int
    fp: int
    lr: int = 0


@dataclass(frozen=True)
class UnwindResult:
    """PCs leaf first (the leaf is the sampled PC, the rest return addresses)."""

    pcs: list[int]
    truncated: bool
    reason: str | None


class _Stop(Exception):
    def __init__(self, reason: str | None, truncated: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.truncated = truncated


class CodeMaps(Protocol):
    """What a walk needs to know of a process: the rule for a PC and where its stack ends."""

    arch: str

    def rule_for(self, pc: int) -> tuple[str, CfiRow | None]: ...

    def stack_end(self, sp: int) -> int: ...


@dataclass
class UnwindMaps:
    """A process's mappings with the unwind table of each, looked up by PC.

    `files` must be the registry `maps` was captured with (it keeps the mapped files open).
    With a background cache, a mapping whose table is being decoded answers STATUS_PENDING
    until it arrives.
    """

    maps: ProcessMaps
    cache: CfiCache
    files: OpenFiles
    arch: str = "x86_64"
    _tables: dict[int, CfiTable | None] = field(default_factory=dict)

    def rule_for(self, pc: int) -> tuple[str, CfiRow | None]:
        """(status, rule) for `pc`: STATUS_CFI with the rule, STATUS_NO_CFI, STATUS_NO_MAPPING,
        STATUS_PENDING."""
        mapping = self.maps.find(pc)
        if mapping is None:
            return STATUS_NO_MAPPING, None
        table = self._table_of(mapping)
        if isinstance(table, Pending):
            return STATUS_PENDING, None
        if table is None:
            return STATUS_NO_CFI, None
        vaddr = table.vaddr_for_offset(mapping.file_offset(pc))
        row = table.find(vaddr) if vaddr is not None else None
        return (STATUS_CFI, row) if row is not None else (STATUS_NO_CFI, None)

    def stack_end(self, sp: int) -> int:
        """The end of the mapping holding `sp` (0 when sp is in no mapping)."""
        mapping = self.maps.find(sp)
        return mapping.end if mapping is not None else 0

    def prefetch(self) -> None:
        """Ask for the tables of every executable file mapping, ahead of any sample."""
        for mapping in self.maps.mappings:
            file_id = mapping.file_id
            if mapping.executable and file_id is not None and self.files.is_open(file_id):
                self.cache.lookup_path(self.files.path_of(file_id), urgent=False, identity=file_id)

    def _table_of(self, mapping: Mapping) -> CfiTable | Pending | None:
        if mapping.start in self._tables:
            return self._tables[mapping.start]
        table = self._load(mapping)
        if not isinstance(table, Pending):
            self._tables[mapping.start] = table
        return table

    def _load(self, mapping: Mapping) -> CfiTable | Pending | None:
        if mapping.path == "[vdso]" and self.maps.vdso_image:
            return self.cache.table_for_image(self.maps.vdso_image)
        if mapping.is_file and mapping.file_id is not None and self.files.is_open(mapping.file_id):
            return self.cache.lookup_path(
                self.files.path_of(mapping.file_id), identity=mapping.file_id
            )
        return None


class _Window:
    """The copied stack bytes [base, base + len) and where the real stack ends."""

    def __init__(self, data: bytes, base: int, stack_end: int) -> None:
        self.data = data
        self.base = base
        self.end = base + len(data)
        self.stack_end = stack_end

    def read(self, addr: int) -> int:
        if self.base <= addr and addr + 8 <= self.end:
            at = addr - self.base
            return int.from_bytes(self.data[at : at + 8], "little")
        if addr + 8 > self.end and self.end < self.stack_end and addr < self.stack_end:
            raise _Stop(REASON_WINDOW, truncated=True)
        raise _Stop(REASON_BAD_READ)


@dataclass
class _Frame:
    pc: int
    sp: int
    fp: int
    lr: int
    fp_known: bool = True
    lr_known: bool = False
    exact: bool = True  # pc is the interrupted instruction, not a return address


def unwind(
    regs: Regs,
    stack_bytes: bytes,
    stack_base_addr: int,
    maps: CodeMaps,
    *,
    fp_fallback: bool = True,
    max_frames: int = MAX_FRAMES,
) -> UnwindResult:
    """Unwind one sample; see the module docstring for the rules and the stop reasons."""
    if not regs.pc or not regs.sp:
        return UnwindResult([regs.pc] if regs.pc else [], False, REASON_NO_USER_REGS)
    window = _Window(stack_bytes, stack_base_addr, maps.stack_end(regs.sp))
    frame = _Frame(regs.pc, regs.sp, regs.fp, regs.lr, lr_known=maps.arch == "aarch64")
    pcs = [regs.pc]
    try:
        while len(pcs) < max_frames:
            frame = _step(frame, window, maps, fp_fallback)
            if frame.pc == 0:
                raise _Stop(None)
            pcs.append(frame.pc)
        raise _Stop(REASON_MAX_DEPTH)
    except _Stop as stop:
        return UnwindResult(pcs, stop.truncated, stop.reason)


def _step(frame: _Frame, window: _Window, maps: CodeMaps, fp_fallback: bool) -> _Frame:
    lookup = frame.pc if frame.exact else frame.pc - 1
    status, row = maps.rule_for(lookup)
    if status == STATUS_NO_MAPPING:
        raise _Stop(REASON_NO_MAPPING)
    if status == STATUS_PENDING:
        raise _Stop(REASON_TABLE_PENDING)
    if row is None:
        if not fp_fallback:
            raise _Stop(REASON_NO_CFI)
        caller = _fp_step(frame, window)
    elif row.kind == CFA_SIGNAL:
        caller = _signal_step(frame, window, maps.arch)
    else:
        caller = _cfi_step(frame, row, window)
    # A caller's frame sits above its callee's; equal only for arm64 leaves (CFA = sp).
    moved_down = caller.sp < frame.sp
    stuck = caller.sp == frame.sp and caller.pc == frame.pc
    if not caller.exact and caller.pc and (moved_down or stuck):
        raise _Stop(REASON_NO_PROGRESS)
    return caller


def _fp_step(frame: _Frame, window: _Window) -> _Frame:
    """Frame-pointer convention (x86_64 and arm64 alike): [fp] = caller's fp, [fp+8] = RA."""
    if not frame.fp_known:
        raise _Stop(REASON_FP_UNKNOWN)
    if frame.fp == 0:
        # The ABI's mark of the outermost frame: the kernel starts a process with rbp zeroed
        # and entry code without CFI (the dynamic loader's _start) keeps it so.
        raise _Stop(None)
    if frame.fp < frame.sp or frame.fp & 7:
        raise _Stop(REASON_FP_INVALID)
    return _Frame(
        pc=window.read(frame.fp + 8),
        sp=frame.fp + 16,
        fp=window.read(frame.fp),
        lr=0,
        exact=False,
    )


def _cfi_step(frame: _Frame, row: CfiRow, window: _Window) -> _Frame:
    cfa = _cfa(frame, row, window)
    if row.ra == SAVED_UNDEFINED:
        raise _Stop(None)  # the outermost frame
    if row.ra == SAVED_SAME and frame.lr_known:
        ra = frame.lr
    elif row.ra in (SAVED_SAME, SAVED_UNSUPPORTED):
        raise _Stop(REASON_UNSUPPORTED_RA)
    else:
        ra = window.read(cfa + row.ra)
    fp, fp_known = frame.fp, frame.fp_known
    if row.fp == SAVED_SAME:
        pass
    elif row.fp in (SAVED_UNDEFINED, SAVED_UNSUPPORTED):
        fp_known = False
    else:
        fp, fp_known = window.read(cfa + row.fp), True
    return _Frame(pc=ra, sp=cfa, fp=fp, lr=0, fp_known=fp_known, exact=False)


def _cfa(frame: _Frame, row: CfiRow, window: _Window) -> int:
    if row.kind == CFA_PLT:
        return frame.sp + 8 + (8 if (frame.pc & 15) >= row.cfa_offset else 0)
    if row.kind not in (CFA_REG, CFA_REG_DEREF):
        raise _Stop(REASON_UNSUPPORTED_CFA)
    if row.cfa_reg == REG_SP:
        base = frame.sp
    elif row.cfa_reg == REG_FP and frame.fp_known:
        base = frame.fp
    elif row.cfa_reg == REG_FP:
        raise _Stop(REASON_FP_UNKNOWN)
    else:
        raise _Stop(REASON_UNSUPPORTED_CFA)
    address = base + row.cfa_offset
    return window.read(address) if row.kind == CFA_REG_DEREF else address


def _signal_step(frame: _Frame, window: _Window, arch: str) -> _Frame:
    """Continue in the code the signal interrupted: its registers are in the ucontext."""
    if arch != "x86_64":
        raise _Stop(REASON_SIGNAL_ARCH)
    uc = frame.sp
    return _Frame(
        pc=window.read(uc + _UC_RIP),
        sp=window.read(uc + _UC_RSP),
        fp=window.read(uc + _UC_RBP),
        lr=0,
        exact=True,
    )
