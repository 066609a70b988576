"""The stack walk on stacks laid out by hand, and UnwindMaps on this process's real maps."""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from otlp_ebpf.symbolize.cfi import (
    CFA_PLT,
    CFA_REG,
    CFA_REG_DEREF,
    CFA_SIGNAL,
    CFA_UNSUPPORTED,
    REG_FP,
    REG_SP,
    SAVED_SAME,
    SAVED_UNDEFINED,
    SAVED_UNSUPPORTED,
    CfiCache,
    CfiRow,
)
from otlp_ebpf.symbolize.procmaps import OpenFiles, ProcessMaps
from otlp_ebpf.symbolize.unwind import (
    REASON_BAD_READ,
    REASON_FP_UNKNOWN,
    REASON_MAX_DEPTH,
    REASON_NO_CFI,
    REASON_NO_MAPPING,
    REASON_NO_PROGRESS,
    REASON_NO_USER_REGS,
    REASON_SIGNAL_ARCH,
    REASON_TABLE_PENDING,
    REASON_UNSUPPORTED_CFA,
    REASON_UNSUPPORTED_RA,
    REASON_WINDOW,
    STATUS_CFI,
    STATUS_NO_CFI,
    STATUS_NO_MAPPING,
    STATUS_PENDING,
    Regs,
    UnwindMaps,
    unwind,
)

SP = 0x7FFF_0000_1000
STACK_END = SP + 0x10000
CODE = 0x40_0000  # functions at CODE + 0x100 * n
NO_CFI_CODE = 0x50_0000  # "JIT" code: mapped, no CFI
LEAF = CFA_REG, REG_SP, 8, -8, SAVED_SAME  # no pushes: CFA = sp + 8, RA at CFA - 8
OUTERMOST = CFA_REG, REG_SP, 8, SAVED_UNDEFINED, SAVED_SAME


@dataclass
class HandMaps:
    """Code at fixed addresses with the rules given, a stack mapping up to STACK_END."""

    rules: dict[int, CfiRow] = field(default_factory=dict)
    arch: str = "x86_64"

    def add(self, function: int, *rule: int) -> int:
        self.rules[function] = CfiRow(*rule)
        return CODE + 0x100 * function

    def rule_for(self, pc: int) -> tuple[str, CfiRow | None]:
        if CODE <= pc < CODE + 0x10000:
            return STATUS_CFI, self.rules.get((pc - CODE) // 0x100)
        if NO_CFI_CODE <= pc < NO_CFI_CODE + 0x10000:
            return STATUS_NO_CFI, None
        return STATUS_NO_MAPPING, None

    def stack_end(self, sp: int) -> int:
        return STACK_END if SP - 0x10000 <= sp < STACK_END else 0


def words(*values: int) -> bytes:
    return b"".join(struct.pack("<Q", v) for v in values)


def test_cfi_frames_up_to_the_outermost() -> None:
    maps = HandMaps()
    hot = maps.add(1, *LEAF)
    caller = maps.add(2, CFA_REG, REG_SP, 24, -8, -16)  # pushed rbp and 8 bytes of locals
    start = maps.add(3, *OUTERMOST)
    # hot's RA, then caller's frame: locals, saved rbp, RA into _start.
    stack = words(caller + 5, 0, 0xF00D, start + 9)
    result = unwind(Regs(hot + 2, SP, 0xBEEF), stack, SP, maps)
    assert result.pcs == [hot + 2, caller + 5, start + 9]
    assert result.reason is None and not result.truncated


def test_frame_pointer_fallback_only_in_auto_mode() -> None:
    maps = HandMaps()
    main = maps.add(1, *OUTERMOST)
    jit = NO_CFI_CODE + 0x40
    fp = SP + 16
    stack = words(0, 0, SP + 64, main + 3)  # [fp] = caller's fp, [fp+8] = RA
    result = unwind(Regs(jit, SP, fp), stack, SP, maps)
    assert result.pcs == [jit, main + 3] and result.reason is None
    strict = unwind(Regs(jit, SP, fp), stack, SP, maps, fp_fallback=False)
    assert strict.pcs == [jit] and strict.reason == REASON_NO_CFI


def test_window_shorter_than_the_stack_is_truncated() -> None:
    maps = HandMaps()
    hot = maps.add(1, CFA_REG, REG_SP, 64, -8, SAVED_SAME)
    result = unwind(Regs(hot, SP, 0), words(0, 0), SP, maps)
    assert result.truncated and result.reason == REASON_WINDOW
    # The same read beyond the end of the stack itself is an error, not a truncation.
    high = STACK_END - 16
    result = unwind(Regs(hot, high, 0), words(0, 0), high, maps)
    assert not result.truncated and result.reason == REASON_BAD_READ


def test_signal_frame_continues_in_the_interrupted_code() -> None:
    maps = HandMaps()
    handler = maps.add(1, *LEAF)
    trampoline = maps.add(2, CFA_SIGNAL, REG_SP, 0, SAVED_UNSUPPORTED, SAVED_UNSUPPORTED)
    interrupted = maps.add(3, *LEAF)
    start = maps.add(4, *OUTERMOST)
    # The handler returns to the trampoline's first byte (its FDE starts one byte earlier, so
    # the lookup at RA - 1 finds it); sp then points at the ucontext.
    ucontext = bytearray(0x400)
    interrupted_sp = SP + 8 + len(ucontext)
    struct.pack_into("<QQ", ucontext, 40 + 15 * 8, interrupted_sp, interrupted + 7)
    stack = words(trampoline + 1) + bytes(ucontext) + words(start + 1)
    result = unwind(Regs(handler, SP, 0), stack, SP, maps)
    assert result.pcs == [handler, trampoline + 1, interrupted + 7, start + 1]
    assert result.reason is None
    arm = HandMaps(maps.rules, arch="aarch64")
    assert unwind(Regs(handler, SP, 0), stack, SP, arm).reason == REASON_SIGNAL_ARCH


def test_plt_and_deref_cfa_rules() -> None:
    maps = HandMaps()
    plt = maps.add(1, CFA_PLT, REG_SP, 11, -8, SAVED_SAME)
    realigned = maps.add(2, CFA_REG_DEREF, REG_FP, -8, -8, SAVED_SAME)
    start = maps.add(3, *OUTERMOST)
    # pc & 15 == 12 >= 11: the stub pushed one word; CFA = sp + 16, RA at sp + 8.
    stack = words(1, realigned + 4, 0, 0, SP + 0x40, 0, 0, start + 2)
    fp = SP + 0x28  # *(fp - 8) == SP + 0x40 is the realigned function's CFA
    result = unwind(Regs(plt + 12, SP, fp), stack, SP, maps)
    assert result.pcs == [plt + 12, realigned + 4, start + 2]


def test_rules_we_cannot_follow_stop_with_a_reason() -> None:
    maps = HandMaps()
    unsupported = maps.add(1, CFA_UNSUPPORTED, 255, 0, -8, SAVED_SAME)
    assert unwind(Regs(unsupported, SP, 0), b"", SP, maps).reason == REASON_UNSUPPORTED_CFA
    no_ra = maps.add(2, CFA_REG, REG_SP, 8, SAVED_UNSUPPORTED, SAVED_SAME)
    assert unwind(Regs(no_ra, SP, 0), words(0), SP, maps).reason == REASON_UNSUPPORTED_RA
    # rbp clobbered by a frame that did not save it, then needed as the CFA base.
    clobber = maps.add(3, CFA_REG, REG_SP, 8, -8, SAVED_UNSUPPORTED)
    on_rbp = maps.add(4, CFA_REG, REG_FP, 16, -8, -16)
    result = unwind(Regs(clobber, SP, SP), words(on_rbp + 1), SP, maps)
    assert result.reason == REASON_FP_UNKNOWN and len(result.pcs) == 2


def test_unmapped_pc_no_progress_depth_and_missing_regs() -> None:
    maps = HandMaps()
    hot = maps.add(1, *LEAF)
    assert unwind(Regs(hot, SP, 0), words(0x10), SP, maps).reason == REASON_NO_MAPPING
    frozen = maps.add(2, CFA_REG, REG_SP, 0, 0, SAVED_SAME)  # CFA == sp: never moves up
    assert unwind(Regs(frozen, SP, 0), words(frozen), SP, maps).reason == REASON_NO_PROGRESS
    looping = maps.add(3, *LEAF)
    deep = unwind(Regs(looping, SP, 0), words(*[looping + 1] * 8), SP, maps, max_frames=4)
    assert deep.reason == REASON_MAX_DEPTH and len(deep.pcs) == 4
    assert unwind(Regs(0, 0, 0), b"", 0, maps).reason == REASON_NO_USER_REGS


def test_arm64_leaf_return_address_is_in_the_link_register() -> None:
    maps = HandMaps(arch="aarch64")
    leaf = maps.add(1, CFA_REG, REG_SP, 0, SAVED_SAME, SAVED_SAME)
    start = maps.add(2, *OUTERMOST)
    result = unwind(Regs(leaf, SP, 0, lr=start + 4), words(0), SP, maps)
    assert result.pcs == [leaf, start + 4] and result.reason is None


def test_unwind_maps_on_this_process() -> None:
    files = OpenFiles()
    try:
        maps = UnwindMaps(ProcessMaps.capture(os.getpid(), files), CfiCache(), files)
        libc_qsort = ctypes.cast(ctypes.CDLL("libc.so.6").qsort, ctypes.c_void_p).value
        assert libc_qsort is not None
        status, row = maps.rule_for(libc_qsort)
        assert status == STATUS_CFI and row is not None and row.cfa_offset == 8
        assert maps.rule_for(8)[0] == STATUS_NO_MAPPING
        stack = next(m for m in maps.maps.mappings if m.path == "[stack]")
        assert maps.stack_end(stack.end - 64) == stack.end
        anonymous = next((m for m in maps.maps.mappings if not m.path and m.end > m.start), None)
        if anonymous is not None:
            assert maps.rule_for(anonymous.start)[0] == STATUS_NO_CFI
    finally:
        files.close()


@dataclass
class PendingMaps(HandMaps):
    """HandMaps whose code at NO_CFI_CODE has a table still being decoded."""

    def rule_for(self, pc: int) -> tuple[str, CfiRow | None]:
        if NO_CFI_CODE <= pc < NO_CFI_CODE + 0x10000:
            return STATUS_PENDING, None
        return super().rule_for(pc)


def test_a_table_not_decoded_yet_stops_the_walk_with_the_frames_so_far() -> None:
    maps = PendingMaps()
    leaf = maps.add(1, *LEAF)
    # leaf's caller is in the mapping whose table is pending.
    stack = words(NO_CFI_CODE + 0x10)
    result = unwind(Regs(leaf, SP, 0), stack, SP, maps)
    assert result.pcs == [leaf, NO_CFI_CODE + 0x10]
    assert result.reason == REASON_TABLE_PENDING
    assert not result.truncated


def test_unwind_maps_answer_pending_until_the_background_table_arrives(tmp_path: Path) -> None:
    files = OpenFiles()
    cache = CfiCache(str(tmp_path), background=True)
    try:
        maps = UnwindMaps(ProcessMaps.capture(os.getpid(), files), cache, files)
        libc = ctypes.CDLL(None)
        pc = ctypes.cast(libc.getpid, ctypes.c_void_p).value or 0
        first, _ = maps.rule_for(pc)
        while cache.worker is not None and cache.worker.busy:
            cache.receive(30.0)
        then, row = maps.rule_for(pc)
    finally:
        cache.close()
        files.close()
    assert (first, then) == (STATUS_PENDING, STATUS_CFI)
    assert row is not None
    assert cache.stats.decoded >= 1
    assert list(tmp_path.glob("*.cfi"))  # the child wrote the disk cache
