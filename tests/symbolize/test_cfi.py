"""Unwind tables from real ELF files: the system libc and programs compiled here."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from otlp_ebpf.symbolize.cfi import (
    CFA_PLT,
    CFA_REG,
    CFA_REG_DEREF,
    CFA_SIGNAL,
    CFA_UNSUPPORTED,
    DECODER_MAX_MB_ENV,
    PENDING,
    REG_FP,
    REG_SP,
    SAVED_SAME,
    SAVED_UNDEFINED,
    CfiCache,
    CfiTable,
    DecodeWorker,
    build_id_of,
    default_cache_dir,
    disk_cache_cap_bytes,
)
from tests.conftest import build_c

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"

PROGRAM = r"""
#include <stdlib.h>
volatile unsigned long sink;
__attribute__((noinline)) void leaf(long n) { for (long i = 0; i < n; i++) sink += i; }
__attribute__((noinline)) void framed(long n) {
    volatile char big[64];
    big[0] = 1;
    leaf(n);
    sink += big[0];
}
int main(int argc, char **argv) { framed(argc > 1 ? atol(argv[1]) : 10); return 0; }
"""


def symbol_address(path: str | Path, name: str) -> int:
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        for table in (".symtab", ".dynsym"):
            section = elf.get_section_by_name(table)
            if section is None:
                continue
            for sym in section.iter_symbols():
                if sym.name == name:
                    return int(sym["st_value"])
    raise LookupError(name)


@pytest.fixture(scope="module")
def libc_table() -> CfiTable:
    table = CfiCache().table_for_path(LIBC)
    assert table is not None
    return table


@pytest.fixture(scope="module")
def program(cc: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cfi")
    return build_c(cc, PROGRAM, out / "prog", "-O2", "-fomit-frame-pointer", "-Wl,-z,lazy")


def test_libc_table_covers_its_functions(libc_table: CfiTable) -> None:
    assert libc_table.arch == "x86_64"
    assert libc_table.entries > 3000
    assert len(libc_table) > 20000
    row = libc_table.find(symbol_address(LIBC, "qsort"))
    assert row is not None
    assert (row.kind, row.cfa_reg, row.cfa_offset, row.ra) == (CFA_REG, REG_SP, 8, -8)


def test_libc_entries_that_fail_to_decode_are_counted_not_fatal(libc_table: CfiTable) -> None:
    # pyelftools cannot decode every libc entry; each failure is one skipped FDE.
    assert libc_table.failures < 10
    assert libc_table.entries + libc_table.failures >= 3700


def test_libc_signal_trampoline_is_a_signal_frame(libc_table: CfiTable) -> None:
    kinds = set(libc_table.kinds)
    assert CFA_SIGNAL in kinds


def test_program_without_frame_pointers(program: Path) -> None:
    table = CfiCache().table_for_path(str(program))
    assert table is not None
    leaf = table.find(symbol_address(program, "leaf"))
    assert leaf is not None
    assert (leaf.cfa_reg, leaf.cfa_offset, leaf.ra, leaf.fp) == (REG_SP, 8, -8, SAVED_SAME)
    start = table.find(symbol_address(program, "_start"))
    assert start is not None and start.ra == SAVED_UNDEFINED  # the outermost frame


def test_lazy_plt_stub_uses_the_plt_expression(program: Path) -> None:
    table = CfiCache().table_for_path(str(program))
    assert table is not None
    plt_rows = [i for i, kind in enumerate(table.kinds) if kind == CFA_PLT]
    assert plt_rows
    assert table.cfa_offsets[plt_rows[0]] in (10, 11)  # the (pc & 15) threshold


def test_frame_pointer_code_has_cfa_on_rbp(cc: str, tmp_path: Path) -> None:
    binary = build_c(cc, PROGRAM, tmp_path / "fp", "-O0", "-fno-omit-frame-pointer")
    table = CfiCache().table_for_path(str(binary))
    assert table is not None
    start = symbol_address(binary, "framed")
    rules = [table.find(pc) for pc in range(start, start + 16)]
    on_rbp = [r for r in rules if r is not None and r.cfa_reg == REG_FP]
    assert on_rbp and on_rbp[0].cfa_offset == 16 and on_rbp[0].fp == -16


def test_debug_frame_and_separate_debug_file(cc: str, tmp_path: Path) -> None:
    flags = ("-O2", "-g", "-fno-asynchronous-unwind-tables", "-fno-exceptions")
    binary = build_c(cc, PROGRAM, tmp_path / "dbg", *flags, "-Wl,--build-id")
    table = CfiCache().table_for_path(str(binary))
    assert table is not None and table.find(symbol_address(binary, "leaf")) is not None

    with open(binary, "rb") as fh:
        build_id = build_id_of(ELFFile(fh))
    debug_dir = tmp_path / "debug" / ".build-id" / build_id[:2]
    debug_dir.mkdir(parents=True)
    subprocess.run(
        ["objcopy", "--only-keep-debug", str(binary), str(debug_dir / f"{build_id[2:]}.debug")],
        check=True,
    )
    subprocess.run(["objcopy", "--strip-debug", str(binary)], check=True)
    leaf = symbol_address(binary, "leaf")
    assert CfiCache().table_for_path(str(binary)).find(leaf) is None  # type: ignore[union-attr]
    with_debug = CfiCache(debug_roots=[str(tmp_path / "debug")]).table_for_path(str(binary))
    assert with_debug is not None and with_debug.find(leaf) is not None


def test_disk_cache_round_trip(program: Path, tmp_path: Path) -> None:
    first = CfiCache(cache_dir=str(tmp_path))
    table = first.table_for_path(str(program))
    assert table is not None and first.stats.decoded == 1
    assert list(tmp_path.glob("*.cfi"))

    second = CfiCache(cache_dir=str(tmp_path))
    again = second.table_for_path(str(program))
    assert second.stats.from_disk == 1 and second.stats.decoded == 0
    assert again is not None and again.to_bytes() == table.to_bytes()
    assert second.table_for_path(str(program)) is again
    assert second.stats.from_memory == 1


def test_disk_cache_is_capped_and_evicts_the_least_recently_used(
    program: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tables of programs long gone are evicted oldest-used first once the directory passes
    the cap; a table read back counts as used."""
    real = CfiCache(cache_dir=str(tmp_path)).table_for_path(str(program))
    assert real is not None
    written = next(tmp_path.glob("*.cfi"))
    size = written.stat().st_size
    # Three older tables of other build-ids, each the size of the real one.
    for age, name in enumerate(["aa01", "aa02", "aa03"]):
        stale = tmp_path / f"{name}.cfi"
        stale.write_bytes(b"x" * size)
        os.utime(stale, ns=(10**18 + age * 10**9, 10**18 + age * 10**9))
    os.utime(tmp_path / "aa01.cfi", ns=(2 * 10**18, 2 * 10**18))  # used most recently
    written.unlink()
    monkeypatch.setenv("OTLP_EBPF_CFI_CACHE_MB", str(2.5 * size / (1024 * 1024)))
    cache = CfiCache(cache_dir=str(tmp_path))
    assert cache.table_for_path(str(program)) is not None  # decoded and written again
    kept = sorted(p.name for p in tmp_path.glob("*.cfi"))
    assert kept == sorted(["aa01.cfi", written.name])
    assert sum(p.stat().st_size for p in tmp_path.glob("*.cfi")) <= 2.5 * size


def test_disk_cache_cap_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTLP_EBPF_CFI_CACHE_MB", "8")
    assert disk_cache_cap_bytes() == 8 << 20
    for bad in ("-1", "nan", "lots"):
        monkeypatch.setenv("OTLP_EBPF_CFI_CACHE_MB", bad)
        assert disk_cache_cap_bytes() == 64 << 20


def test_a_table_read_back_is_marked_used(program: Path, tmp_path: Path) -> None:
    CfiCache(cache_dir=str(tmp_path)).table_for_path(str(program))
    path = next(tmp_path.glob("*.cfi"))
    os.utime(path, ns=(10**18, 10**18))
    assert CfiCache(cache_dir=str(tmp_path)).table_for_path(str(program)) is not None
    assert path.stat().st_mtime_ns > 10**18


def test_corrupt_cache_file_is_decoded_again(program: Path, tmp_path: Path) -> None:
    CfiCache(cache_dir=str(tmp_path)).table_for_path(str(program))
    for path in tmp_path.glob("*.cfi"):
        path.write_bytes(b"garbage")
    cache = CfiCache(cache_dir=str(tmp_path))
    assert cache.table_for_path(str(program)) is not None
    assert cache.stats.decoded == 1


def test_unreadable_files_give_none(tmp_path: Path) -> None:
    not_elf = tmp_path / "text"
    not_elf.write_text("hello")
    cache = CfiCache()
    assert cache.table_for_path(str(not_elf)) is None
    assert cache.table_for_path(str(tmp_path / "missing")) is None
    assert cache.stats.unreadable == 2
    with pytest.raises(ValueError):
        CfiTable.from_bytes(b"nope")


def test_vdso_image_has_unwind_rows() -> None:
    maps = Path("/proc/self/maps").read_text().splitlines()
    line = next(m for m in maps if m.endswith("[vdso]"))
    start, end = (int(x, 16) for x in line.split()[0].split("-"))
    with open("/proc/self/mem", "rb") as mem:
        mem.seek(start)
        image = mem.read(end - start)
    table = CfiCache().table_for_image(image)
    assert table is not None and len(table) > 0
    assert table.vaddr_for_offset(0) is not None


def test_deref_cfa_rule_as_gcc_emits_for_stack_realignment(cc: str, tmp_path: Path) -> None:
    # DW_CFA_def_cfa_expression: DW_OP_breg6 (rbp) -8; DW_OP_deref (gcc's DRAP functions),
    # then an expression we do not evaluate (DW_OP_breg3 (rbx) 0).
    asm = tmp_path / "drap.s"
    asm.write_text(
        """
        .text
        .globl drap
        .type drap, @function
drap:
        .cfi_startproc
        push %rbp
        .cfi_escape 0x0f,0x03,0x76,0x78,0x06
        nop
        .cfi_escape 0x0f,0x02,0x73,0x00
        nop
        pop %rbp
        ret
        .cfi_endproc
        .size drap, .-drap
        .globl main
main:
        xor %eax, %eax
        ret
        .section .note.GNU-stack,"",@progbits
"""
    )
    binary = tmp_path / "drap"
    subprocess.run([cc, "-o", str(binary), str(asm)], check=True)
    table = CfiCache().table_for_path(str(binary))
    assert table is not None
    start = symbol_address(binary, "drap")
    deref = table.find(start + 1)
    assert deref is not None
    assert (deref.kind, deref.cfa_reg, deref.cfa_offset) == (CFA_REG_DEREF, REG_FP, -8)
    other = table.find(start + 2)
    assert other is not None and other.kind == CFA_UNSUPPORTED


def test_default_cache_dir_honours_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert default_cache_dir() == "/somewhere/otlp-ebpf/cfi"
    assert shutil.which("objcopy")  # the debug-file test needs binutils


def test_background_decoding_answers_pending_then_the_table(program: Path, tmp_path: Path) -> None:
    cache = CfiCache(cache_dir=str(tmp_path), background=True)
    try:
        assert cache.lookup_path(str(program)) is PENDING
        assert cache.lookup_path(str(program)) is PENDING  # asked once, still pending
        assert cache.receive(30.0) == 1
        table = cache.lookup_path(str(program))
        assert isinstance(table, CfiTable) and len(table) > 0
        assert cache.stats.decoded == 1
    finally:
        cache.close()
    worker = cache.worker
    assert worker is not None and worker.cpu_s > 0  # its cost is known once it ended
    # The child stored the table: a later run reads it back without decoding.
    again = CfiCache(cache_dir=str(tmp_path), background=True)
    assert isinstance(again.lookup_path(str(program)), CfiTable)
    assert again.worker is not None and not again.worker.started


def test_background_decoding_of_a_file_that_is_not_elf(tmp_path: Path) -> None:
    not_elf = tmp_path / "x.so"
    not_elf.write_bytes(b"\x7fELF" + b"\0" * 60)
    cache = CfiCache(background=True)
    try:
        assert cache.lookup_path(str(not_elf)) is None
        assert cache.lookup_path(str(tmp_path / "missing")) is None
    finally:
        cache.close()
    assert cache.stats.unreadable == 2


def test_urgent_requests_go_before_prefetches(program: Path, tmp_path: Path) -> None:
    worker = DecodeWorker(None, ())
    try:
        worker.request("a", str(program), urgent=True)  # sent at once
        worker.request("b", str(program), urgent=False)
        worker.request("c", str(program), urgent=True)
        worker.request("b", str(program), urgent=False)  # already queued: no duplicate
        assert [t[2] for t in worker._todo] == ["c", "b"]
        assert worker.pending_urgent() == 2
        done: list[str] = []
        while worker.busy:
            done += [key for key, data in worker.receive(30.0) if data]
        assert done == ["a", "c", "b"]
    finally:
        worker.close()


def _decode_all(worker: DecodeWorker) -> list[tuple[str, bool]]:
    done: list[tuple[str, bool]] = []
    while worker.busy:
        done += [(key, data is not None) for key, data in worker.receive(30.0)]
    return done


def test_a_decoding_child_holding_too_much_after_a_decode_is_replaced(program: Path) -> None:
    worker = DecodeWorker(None, ())
    worker.recycle_rss_kb = 1  # every child holds more than this after a decode
    pids = []
    try:
        for key in ("a", "b"):
            worker.request(key, str(program), urgent=True)
            pids.append(worker.pid)
            assert _decode_all(worker) == [(key, True)]
            assert worker.rss_kb() == 0  # ended once its table was read
    finally:
        worker.close()
    assert pids[0] != pids[1]
    assert (worker.starts, worker.recycled) == (2, 2)
    assert worker.cpu_s > 0 and worker.peak_rss_kb > 0  # both children's cost is kept


def _libpython() -> Path:
    import sysconfig

    big = Path(sysconfig.get_config_var("LIBDIR") or "") / (
        sysconfig.get_config_var("INSTSONAME") or "none"
    )
    if not big.is_file() or big.stat().st_size < 10 << 20:
        pytest.skip("needs a shared libpython of 10 MB or more")
    return big


def test_a_decoder_held_to_a_cpu_limit_is_paused_and_still_finishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libpython takes a second or two of CPU to decode: held to half a core with little
    credit, the child is stopped part of the time, and the table still comes."""
    from otlp_ebpf.symbolize import cfi

    monkeypatch.setattr(cfi, "PACE_AHEAD_S", 0.1)
    worker = DecodeWorker(None, ())
    worker.allowance.pct = 50.0
    done: list[tuple[str, bytes | None]] = []
    try:
        worker.request("big", str(_libpython()), urgent=True)
        while worker.busy:
            done += worker.receive(0.05)  # the agent's poll: paced at every call
    finally:
        worker.close()
    assert [(key, data is not None) for key, data in done] == [("big", True)]
    assert worker.paused_s > 0


def test_the_decoders_children_pay_from_one_allowance_every_cpu_second_they_use() -> None:
    """Credit spent (here: a debt) stays spent for the next child, which is stopped before it
    decodes; a deposit lets it go on. Each child is charged from its start to its end, so
    the allowance's spending is the children's CPU, whatever pacing saw of them."""
    from otlp_ebpf.symbolize.allowance import CpuAllowance

    worker = DecodeWorker(None, ())
    worker.recycle_rss_kb = 0  # a new child for every decode
    worker.allowance = CpuAllowance(pct=1e-6, ahead_s=5.0)  # earns next to nothing
    worker.allowance.spend(6.0)  # a second in debt, as a child before might leave it
    done: list[tuple[str, bool]] = []
    try:
        worker.request("libc", LIBC, urgent=True)
        for _ in range(20):  # a second of the agent's polls (each paces the child)
            done += [(key, data is not None) for key, data in worker.receive(0.05)]
        assert done == [] and worker._paused_at is not None, "a child in debt decoded"
        worker.allowance.deposit(10.0)  # the budget's unspent part: credit again (capped)
        done += _decode_all(worker)
        worker.request("libc-again", LIBC, urgent=True)
        done += _decode_all(worker)
    finally:
        worker.close()
    assert done == [("libc", True), ("libc-again", True)]
    assert worker.starts == 2 and worker.paused_s > 0
    assert worker.allowance.spent_s - 6.0 == pytest.approx(worker.cpu_s, abs=0.02)


def test_a_child_stopped_in_the_middle_of_a_table_does_not_block_its_parent() -> None:
    """The child stopped (as `pace` stops it) after it began to write libc's table, more than
    a pipe holds: `receive` returns at its timeout with nothing, and the table comes whole
    once the child runs again (the parent used to wait in a read for the rest, for ever)."""
    worker = DecodeWorker(None, ())
    done: list[tuple[str, bytes | None]] = []
    try:
        worker.request("libc", LIBC, urgent=True)
        assert worker._proc is not None and worker._proc.stdout is not None
        select.select([worker._proc.stdout], [], [], 300)  # the child began its answer
        os.kill(worker.pid, signal.SIGSTOP)
        reader = threading.Thread(target=lambda: done.extend(worker.receive(0.2)), daemon=True)
        reader.start()
        reader.join(60)  # a liveness bound only: blocked, it would never return
        assert not reader.is_alive(), "receive() waited for a stopped child"
        assert done == []
        os.kill(worker.pid, signal.SIGCONT)
        for _ in range(2400):  # bounded: a table never completed would never end
            if not worker.busy:
                break
            done += worker.receive(0.05)
    finally:
        with contextlib.suppress(OSError):
            os.kill(worker.pid, signal.SIGCONT)
        worker.close()
    assert [key for key, _ in done] == ["libc"]
    data = done[0][1]
    assert data is not None and len(data) > 65536
    assert len(CfiTable.from_bytes(data)) > 1000


def test_a_child_killed_in_a_decode_leaves_that_file_without_a_table_and_the_rest_decoded(
    program: Path,
) -> None:
    worker = DecodeWorker(None, ())
    done: list[tuple[str, bool]] = []
    try:
        worker.request("big", str(_libpython()), urgent=True)
        worker.request("small", str(program), urgent=True)
        os.kill(worker.pid, 9)  # the OOM killer, say
        for _ in range(1200):  # bounded: a queue left stalled would never end
            if not worker.busy:
                break
            done += [(key, data is not None) for key, data in worker.receive(0.05)]
    finally:
        worker.close()
    assert done == [("big", False), ("small", True)]
    assert worker.starts == 2


def test_a_decode_over_the_heap_cap_gives_no_table_and_a_new_child(
    program: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpython's FDEs take pyelftools well over 64 MB: that decode fails whole (no partial
    table is kept or cached), and the next file goes to a new child."""
    big = _libpython()
    monkeypatch.setenv(DECODER_MAX_MB_ENV, "64")
    worker = DecodeWorker(None, ())
    try:
        worker.request("big", str(big), urgent=True)
        assert _decode_all(worker) == [("big", False)]
        worker.request("small", str(program), urgent=True)
        assert _decode_all(worker) == [("small", True)]
    finally:
        worker.close()
    assert (worker.starts, worker.recycled) == (2, 1)
    assert worker.peak_rss_kb < 128 * 1024


def test_tables_in_memory_are_bounded_least_recently_used_first() -> None:
    """A host building new binaries all day must not keep every table it met."""
    from otlp_ebpf.symbolize.cfi import CfiRow, TableLru

    def table(rows: int) -> CfiTable:
        t = CfiTable("x86_64", "id", ())
        for i in range(rows):
            t.append(i * 16, CfiRow(1, 7, 8, -8, 0))
        return t

    lru = TableLru(max_rows=250)
    lru.put("a", table(100))
    lru.put("b", table(100))
    assert lru.get("a") is not None  # a used: b is now the oldest
    lru.put("c", table(100))
    assert "b" not in lru and "a" in lru and "c" in lru
    assert lru.rows == 200
    lru.put("huge", table(1000))  # bigger than the cap: kept alone
    assert len(lru) == 1 and lru.get("huge") is not None


def test_a_reused_descriptor_number_does_not_mix_up_two_files() -> None:
    """Files are held as /proc/self/fd/N; once one is closed for room its number is used for
    the next file opened: the table of one is never taken for the other's."""
    cache = CfiCache(None)
    fd = os.open("/bin/true", os.O_RDONLY)
    first = cache._key_of(f"/proc/self/fd/{fd}")
    os.close(fd)
    again = os.open("/bin/ls", os.O_RDONLY)
    try:
        assert again == fd  # the same number, another file
        assert cache._key_of(f"/proc/self/fd/{again}") not in (None, first)
    finally:
        os.close(again)


def test_the_decoding_child_keeps_no_table_it_sent(program: Path, tmp_path: Path) -> None:
    """The child hands each table to the parent, which caches it: kept in the child as well,
    every table it ever decoded would grow it for the whole run."""
    cache = CfiCache(str(tmp_path))
    cache.memory_rows = 0
    assert cache.table_for_path(str(program)) is not None
    assert cache.table_for_path(str(program)) is not None  # read back from disk, not memory
    assert len(cache) == 0 and cache.stats.decoded == 1 and cache.stats.from_disk == 1
