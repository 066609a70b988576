"""The Symbolizer facade on a /proc tree and kallsyms laid out in a temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from otlp_ebpf.symbolize.allowance import CpuAllowance
from otlp_ebpf.symbolize.elf import ElfSymbolizer
from otlp_ebpf.symbolize.resolver import UNKNOWN_FRAME, Symbolizer, SymbolizeStats

LIBC = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")
BASE = 0x7F0000000000
JIT = 0x7E0000000000
KALLSYMS = "ffffffff81000000 T _stext\nffffffff81000400 T vfs_read\nffffffff81000800 T ksys_read\n"


def _libc_file_offset(name: str) -> int:
    text = subprocess.run(
        ["nm", "-D", "--defined-only", LIBC], check=True, capture_output=True, text=True
    ).stdout
    vaddr = next(
        int(p[0], 16) for p in map(str.split, text.splitlines()) if p[2].split("@")[0] == name
    )
    info = ElfSymbolizer().load_path(LIBC).info
    segment = next(s for s in info.segments if s.vaddr <= vaddr < s.vaddr + s.filesz)
    return segment.offset + (vaddr - segment.vaddr)


class FakeProc:
    """A /proc/PID directory with a maps file, a stat line and a root."""

    def __init__(self, proc_root: Path, pid: int) -> None:
        self.dir = proc_root / str(pid)
        self.dir.mkdir(parents=True)
        (self.dir / "root").symlink_to("/")
        self.set_start_time(1234)
        self.lines: list[str] = []

    def set_start_time(self, ticks: int) -> None:
        fields = ["S"] + ["0"] * 18 + [str(ticks), "0"]
        (self.dir / "stat").write_text(f"77 (my (odd) comm) {' '.join(fields)}\n")

    def map(self, start: int, end: int, perms: str, path: str = "", inode: int = 0) -> None:
        self.lines.append(f"{start:x}-{end:x} {perms} 00000000 08:01 {inode} {path}")
        (self.dir / "maps").write_text("\n".join(self.lines) + "\n")


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    fake = FakeProc(tmp_path / "proc", 77)
    fake.map(BASE, BASE + os.path.getsize(LIBC), "r-xp", LIBC, os.stat(LIBC).st_ino)
    fake.map(JIT, JIT + 0x10000, "rwxp")
    return fake


def _symbolizer(tmp_path: Path, kallsyms: str = KALLSYMS) -> Symbolizer:
    (tmp_path / "kallsyms").write_text(kallsyms)
    return Symbolizer(
        proc_root=str(tmp_path / "proc"),
        kallsyms_path=str(tmp_path / "kallsyms"),
        debug_roots=["/usr/lib/debug"],
    )


def test_user_frames_name_each_address_in_order(proc: FakeProc, tmp_path: Path) -> None:
    qsort = BASE + _libc_file_offset("qsort")
    with _symbolizer(tmp_path) as symbolizer:
        assert symbolizer.remember_process(77)
        frames = symbolizer.user_frames(77, [qsort + 1, qsort + 1, JIT + 5, 0x42])
    assert frames == [
        ("qsort", LIBC),
        ("qsort", LIBC),
        (f"0x{JIT + 4:x}", ""),
        (UNKNOWN_FRAME, ""),
    ]
    assert symbolizer.stats.resolved == 2
    assert symbolizer.stats.by_reason == {"anonymous": 1, "no_mapping": 1}


def test_perf_map_names_anonymous_code(proc: FakeProc, tmp_path: Path) -> None:
    perf_dir = proc.dir / "root"
    perf_dir.unlink()
    perf_dir.mkdir()
    (perf_dir / "tmp").mkdir()
    (perf_dir / "tmp" / "perf-77.map").write_text(f"{JIT + 0x100:x} 40 jitted_fn\n")
    with _symbolizer(tmp_path) as symbolizer:
        frames = symbolizer.user_frames(77, [JIT + 0x110], adjust_return_addresses=False)
    assert frames == [("jitted_fn", str(perf_dir / "tmp" / "perf-77.map"))]


def test_unreadable_file_gives_module_plus_offset(proc: FakeProc, tmp_path: Path) -> None:
    proc.map(0x1000, 0x3000, "r-xp", "/nonexistent/libgone.so", 99)
    with _symbolizer(tmp_path) as symbolizer:
        frames = symbolizer.user_frames(77, [0x1234], adjust_return_addresses=False)
    assert frames == [("libgone.so+0x234", "/nonexistent/libgone.so")]
    assert symbolizer.stats.by_reason == {"file_unreadable": 1}


def test_code_mapped_after_capture_is_found_by_capturing_again(
    proc: FakeProc, tmp_path: Path
) -> None:
    with _symbolizer(tmp_path) as symbolizer:
        symbolizer.remember_process(77)
        proc.map(0x5000, 0x6000, "r-xp", "/nonexistent/libdlopened.so", 98)
        frames = symbolizer.user_frames(77, [0x5010], adjust_return_addresses=False)
    assert frames == [("libdlopened.so+0x10", "/nonexistent/libdlopened.so")]


def test_a_reused_pid_is_not_captured_again(proc: FakeProc, tmp_path: Path) -> None:
    with _symbolizer(tmp_path) as symbolizer:
        symbolizer.remember_process(77)
        proc.set_start_time(999)
        proc.map(0x5000, 0x6000, "r-xp", "/nonexistent/other.so", 98)
        assert symbolizer.user_frames(77, [0x5010]) == [(UNKNOWN_FRAME, "")]


def test_addresses_from_before_an_exec_use_the_older_maps(proc: FakeProc, tmp_path: Path) -> None:
    qsort = BASE + _libc_file_offset("qsort")
    with _symbolizer(tmp_path) as symbolizer:
        symbolizer.remember_process(77)
        proc.lines = []
        proc.map(0x1000, 0x2000, "r-xp", "/nonexistent/newprog", 5)
        symbolizer.remember_process(77)
        frames = symbolizer.user_frames(77, [0x1004, qsort], adjust_return_addresses=False)
    assert frames == [("newprog+0x4", "/nonexistent/newprog"), ("qsort", LIBC)]


def test_unknown_process_gives_unknown_frames(tmp_path: Path) -> None:
    with _symbolizer(tmp_path) as symbolizer:
        assert not symbolizer.remember_process(31337)
        assert symbolizer.user_frames(31337, [1, 2]) == [(UNKNOWN_FRAME, "")] * 2
    assert symbolizer.stats.by_reason == {"process_unknown": 2}


def test_kernel_frames_carry_the_suffix_and_adjust_return_addresses(tmp_path: Path) -> None:
    with _symbolizer(tmp_path) as symbolizer:
        names = symbolizer.kernel_frames([0xFFFFFFFF81000410, 0xFFFFFFFF81000800, 0x10])
    # The second frame is a return address right at the start of ksys_read: the call was
    # the last instruction of vfs_read.
    assert names == ["vfs_read_[k]", "vfs_read_[k]", "0xf_[k]"]
    assert symbolizer.stats.summary() == ("2 frames resolved, 1 unresolved (kernel_no_symbol 1)")


def test_restricted_or_missing_kallsyms_gives_hex_kernel_frames(tmp_path: Path) -> None:
    zeros = "0000000000000000 T _stext\n0000000000000000 T vfs_read\n"
    with _symbolizer(tmp_path, zeros) as symbolizer:
        names = symbolizer.kernel_frames([0xFFFFFFFF81000410], adjust_return_addresses=False)
    assert names == ["0xffffffff81000410_[k]"]
    assert symbolizer.stats.by_reason == {"kallsyms_unavailable": 1}
    missing = Symbolizer(kallsyms_path=str(tmp_path / "absent"))
    assert missing.kernel_frames([0xFFFFFFFF81000410]) == ["0xffffffff81000410_[k]"]


def test_stats_summary_without_failures() -> None:
    stats = SymbolizeStats()
    stats.count("")
    assert stats.summary() == "1 frames resolved, 0 unresolved"


def test_an_empty_capture_of_an_exiting_process_keeps_the_earlier_one(
    proc: FakeProc, tmp_path: Path
) -> None:
    qsort = BASE + _libc_file_offset("qsort")
    with _symbolizer(tmp_path) as symbolizer:
        assert symbolizer.remember_process(77)
        (proc.dir / "maps").write_text("")
        assert not symbolizer.remember_process(77)
        frames = symbolizer.user_frames(77, [qsort], adjust_return_addresses=False)
    assert frames == [("qsort", LIBC)]


def test_a_forgotten_process_keeps_nothing(proc: FakeProc, tmp_path: Path) -> None:
    """Once its stacks are named, a process gone for good frees its captured maps (the cpu
    collector does so for the processes it evicts): nothing of it resolves any more."""
    qsort = BASE + _libc_file_offset("qsort")
    with _symbolizer(tmp_path) as symbolizer:
        assert symbolizer.remember_process(77)
        (proc.dir / "maps").write_text("")  # exited
        symbolizer.forget_process(77)
        frames = symbolizer.user_frames(77, [qsort], adjust_return_addresses=False)
    assert frames == [(UNKNOWN_FRAME, "")]


def test_symbol_tables_are_bounded_by_symbols_and_not_kept_alive_per_file() -> None:
    """Past its symbol budget the least recently used table is dropped, and nothing kept per
    mapped file holds it alive; an address in it is named again by reading the file again."""
    import ctypes
    import gc
    import weakref

    qsort = ctypes.cast(ctypes.CDLL(None).qsort, ctypes.c_void_p).value
    py_api = ctypes.cast(ctypes.pythonapi.Py_IsInitialized, ctypes.c_void_p).value
    assert qsort is not None and py_api is not None
    with Symbolizer() as symbolizer:
        symbolizer._elf.max_symbols = 1  # room for one table at a time
        assert symbolizer.remember_process(os.getpid())
        pid = os.getpid()
        assert symbolizer.user_frames(pid, [qsort], adjust_return_addresses=False)[0][0] == "qsort"
        (libc,) = symbolizer._elf._by_build_id.values()
        gone = weakref.ref(libc)
        del libc
        symbolizer.user_frames(pid, [py_api], adjust_return_addresses=False)
        gc.collect()
        assert gone() is None
        assert symbolizer.held()["symbol_tables"] == 1
        # Another process of libc: its table is read again, not found dead.
        symbolizer.forget_process(pid)
        assert symbolizer.remember_process(pid)
        assert symbolizer.user_frames(pid, [qsort], adjust_return_addresses=False)[0][0] == "qsort"


def test_an_elf_symbolizer_drops_tables_past_its_symbol_budget() -> None:
    elf = ElfSymbolizer(max_symbols=1)
    first = elf.load_path("/bin/true")
    second = elf.load_path("/bin/ls")
    assert elf.tables_held == 1 and elf.cached(second.info.build_id) is second
    assert elf.cached(first.info.build_id) is None
    assert elf.symbols_held == len(second.symbols)


def test_an_elf_symbolizer_drops_tables_past_its_byte_budget() -> None:
    # Room for the larger table alone: loading the other evicts the first, by bytes.
    probe = ElfSymbolizer()
    sizes = {p: probe.load_path(p).symbols.nbytes for p in ("/bin/true", "/bin/ls")}
    elf = ElfSymbolizer(max_bytes=max(sizes.values()))
    first = elf.load_path("/bin/true")
    second = elf.load_path("/bin/ls")
    assert elf.cached(first.info.build_id) is None and elf.cached(second.info.build_id) is second
    assert elf.bytes_held == sizes["/bin/ls"]


def test_a_symbol_table_holds_its_symbols_compactly() -> None:
    # Addresses and names in flat arrays, not three Python objects a symbol (~150 bytes).
    maps = Path("/proc/self/maps").read_text().splitlines()
    libc = next(line.split()[-1] for line in maps if "/libc.so" in line)
    table = ElfSymbolizer().load_path(libc).symbols
    names = sum(len(table.name(i).encode()) for i in range(len(table)))
    assert len(table) > 100
    assert table.nbytes <= 24 * len(table) + names + 8
    assert sys.getsizeof(table.starts) + sys.getsizeof(table.ends) < 20 * len(table) + 200
    assert not isinstance(table.starts, list)


def test_a_long_lived_process_keeps_a_bounded_memo_of_resolved_addresses() -> None:
    """Every address of a process's code may be sampled in a long run: past the cap, the
    memo starts again instead of growing; the names stay right."""
    import ctypes

    from otlp_ebpf.symbolize.resolver import MAX_MEMO_PER_PID

    qsort = ctypes.cast(ctypes.CDLL(None).qsort, ctypes.c_void_p).value
    assert qsort is not None
    pid = os.getpid()
    with Symbolizer() as symbolizer:
        assert symbolizer.remember_process(pid)
        addrs = [qsort + i for i in range(MAX_MEMO_PER_PID * 2 + 10)]
        symbolizer.user_frames(pid, addrs, adjust_return_addresses=False)
        assert 0 < symbolizer.held()["memo_entries"] <= MAX_MEMO_PER_PID
        assert symbolizer.user_frames(pid, [qsort], adjust_return_addresses=False)[0][0] == "qsort"


def test_captures_of_one_process_are_bounded_by_their_mappings() -> None:
    """A process captured again and again (it loads libraries all day) keeps its newest
    captures up to a number of mappings, not eight captures of any size."""
    from otlp_ebpf.symbolize.procmaps import ProcessMaps
    from otlp_ebpf.symbolize.resolver import MAX_MAPPINGS_PER_PID

    pid = os.getpid()
    with Symbolizer() as symbolizer:
        real = ProcessMaps.capture(pid, symbolizer.files).mappings
        per_capture = MAX_MAPPINGS_PER_PID // 3
        for drop in range(8):
            # Distinct captures of about a third of the cap each (mappings repeated to size).
            mappings = (real[drop:] * (per_capture // max(1, len(real) - drop) + 1))[:per_capture]
            assert symbolizer.remember_maps(pid, ProcessMaps(pid, list(mappings)))
        held = symbolizer.held()
        assert per_capture <= held["mappings"] <= MAX_MAPPINGS_PER_PID


def test_under_a_load_allowance_a_new_file_waits_and_is_named_module_plus_offset(
    proc: FakeProc, tmp_path: Path
) -> None:
    """Under the agent's budget a new binary's symbols wait for their share of CPU: its
    frames are named module+offset meanwhile (not remembered as such), the file is queued and
    counted, and loaded from the queue as the allowance allows."""
    offset = _libc_file_offset("qsort")
    with _symbolizer(tmp_path) as symbolizer:
        assert symbolizer.remember_process(77)
        symbolizer.load_allowance = CpuAllowance(pct=1.0)  # a budget: new files wait first
        frames = symbolizer.user_frames(77, [BASE + offset], adjust_return_addresses=False)
        again = symbolizer.user_frames(77, [BASE + offset], adjust_return_addresses=False)
        assert frames == again == [(f"libc.so.6+0x{offset:x}", LIBC)]
        assert symbolizer.files_parsed == 0
        assert symbolizer.deferred_files == 1  # one file, however many of its frames
        assert symbolizer.held()["symbol_files_deferred"] == 1
        assert symbolizer.stats.by_reason == {"symbols_deferred": 2}
        symbolizer.load_allowance = CpuAllowance()  # the budget has room again
        assert symbolizer.load_deferred() == 1
        frames = symbolizer.user_frames(77, [BASE + offset], adjust_return_addresses=False)
    assert frames == [("qsort", LIBC)]
    assert symbolizer.deferred_loaded == 1
    assert symbolizer.held()["symbol_files_deferred"] == 0


def test_the_allowance_holds_work_to_its_share_of_cpu() -> None:
    allowance = CpuAllowance(pct=50.0, ahead_s=0.01)
    assert allowance.available()
    allowance.spend(0.02)  # beyond the credit: the work waits until it is earned back
    assert not allowance.available()
    assert CpuAllowance().available()  # no share: no limit


def test_a_deposit_adds_credit_up_to_the_allowance_s_cap() -> None:
    allowance = CpuAllowance(pct=1e-9, ahead_s=0.5)
    allowance.spend(1.0)  # half a second in debt: it waits
    assert not allowance.available()
    allowance.deposit(0.4)
    assert not allowance.available()  # still 0.1 s short
    allowance.deposit(5.0)
    assert allowance.available()
    allowance.spend(0.49)  # the deposit was capped at 0.5 s: 0.01 s left
    assert allowance.available()
    allowance.spend(0.02)
    assert not allowance.available()
    assert allowance.deposited_s == 5.4


def test_credit_that_lapses_is_gone_but_a_debt_stays() -> None:
    allowance = CpuAllowance(pct=1e-9, ahead_s=2.0)
    assert allowance.credit_s == pytest.approx(2.0)
    allowance.lapse()
    assert allowance.credit_s == pytest.approx(0.0, abs=1e-6)
    allowance.spend(0.5)
    allowance.lapse()
    assert allowance.credit_s == pytest.approx(-0.5)


def test_a_second_process_mapping_a_file_is_named_from_the_first_ones_lookups(
    proc: FakeProc, tmp_path: Path
) -> None:
    """Two processes of one program map the same file at other addresses: a frame of the
    second at the same offset takes the name looked up for the first."""
    other = FakeProc(tmp_path / "proc", 78)
    elsewhere = BASE + 0x1000000000
    other.map(elsewhere, elsewhere + os.path.getsize(LIBC), "r-xp", LIBC, os.stat(LIBC).st_ino)
    offset = _libc_file_offset("qsort")
    with _symbolizer(tmp_path) as symbolizer:
        assert symbolizer.remember_process(77) and symbolizer.remember_process(78)
        first = symbolizer.user_frames(77, [BASE + offset], adjust_return_addresses=False)
        assert symbolizer.shared_frames == 0
        second = symbolizer.user_frames(78, [elsewhere + offset], adjust_return_addresses=False)
    assert first == second == [("qsort", LIBC)]
    assert symbolizer.shared_frames == 1
