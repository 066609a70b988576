"""Every cache kept per process, per file or per build-id has a cap: a run over endless new
processes and binaries keeps at most that many, counts what it evicted, and computes an
evicted entry again when it is needed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from otlp_ebpf.symbolize import resolver
from otlp_ebpf.symbolize.elf import ElfSymbolizer
from otlp_ebpf.symbolize.lru import Lru
from otlp_ebpf.symbolize.resolver import Symbolizer
from tests.symbolize.test_resolver import FakeProc

TRUE = os.path.realpath("/bin/true")


def test_lru_holds_its_cap_and_counts_what_it_evicted() -> None:
    cache: Lru[int, str] = Lru(100)
    computed = 0

    def lookup(key: int) -> str:
        nonlocal computed
        value = cache.get(key)
        if value is None:
            computed += 1
            value = cache[key] = f"value {key}"
        return value

    for pid in range(10_000):
        lookup(pid)
    assert len(cache) == 100
    assert cache.evicted == 9_900
    assert 0 not in cache and 9_999 in cache
    assert lookup(0) == "value 0" and computed == 10_001  # evicted: computed again
    assert lookup(9_999) == "value 9999" and computed == 10_001  # held: not computed


def test_lru_keeps_the_recently_used_and_tells_of_evictions() -> None:
    dropped: list[tuple[str, int]] = []
    cache: Lru[str, int] = Lru(2, on_evict=lambda k, v: dropped.append((k, v)))
    cache["a"], cache["b"] = 1, 2
    assert cache["a"] == 1  # a is now the most recent
    cache["c"] = 3
    assert dropped == [("b", 2)]
    assert list(cache) == ["a", "c"]
    with pytest.raises(ValueError):
        Lru(0)


def test_symbol_tables_are_capped_and_an_evicted_one_is_parsed_again() -> None:
    elf = ElfSymbolizer(max_tables=2)
    paths = [TRUE, os.path.realpath("/bin/ls"), os.path.realpath("/bin/id")]
    for path in paths:
        elf.load_path(path)
    assert (elf.tables_held, elf.tables_evicted, elf.files_parsed) == (2, 1, 3)
    elf.load_path(paths[2])  # held: no parse
    assert elf.files_parsed == 3
    elf.load_path(paths[0])  # evicted: parsed again
    assert elf.files_parsed == 4


def test_copies_of_one_binary_share_one_symbol_table_and_files_are_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty processes, each mapping its own copy of /bin/true (its own inode, as a build
    that writes the binary anew gives): one parse, and at most MAX_FILES files remembered."""
    monkeypatch.setattr(resolver, "MAX_FILES", 16)
    size = os.path.getsize(TRUE)
    pids = range(100, 140)
    for pid in pids:
        copy = tmp_path / f"true-{pid}"
        shutil.copy(TRUE, copy)
        fake = FakeProc(tmp_path / "proc", pid)
        fake.map(0x400000, 0x400000 + size, "r-xp", str(copy), os.stat(copy).st_ino)
    with Symbolizer(proc_root=str(tmp_path / "proc"), kallsyms_path="/nonexistent") as sym:
        for pid in pids:
            assert sym.remember_process(pid)
            sym.user_frames(pid, [0x400000 + 0x1000], adjust_return_addresses=False)
        held = sym.held()
    assert sym.files_parsed == 1
    assert held["symbol_tables"] == 1
    assert held["files"] == 16 and held["files_evicted"] == 40 - 16


def test_captured_maps_are_kept_for_a_capped_number_of_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resolver, "MAX_PROCESSES", 50)
    size = os.path.getsize(TRUE)
    pids = range(1000, 1300)
    for pid in pids:
        FakeProc(tmp_path / "proc", pid).map(
            0x400000, 0x400000 + size, "r-xp", TRUE, os.stat(TRUE).st_ino
        )
    with Symbolizer(proc_root=str(tmp_path / "proc"), kallsyms_path="/nonexistent") as sym:
        for pid in pids:
            assert sym.remember_process(pid)
        held = sym.held()
        assert (held["processes"], held["processes_evicted"]) == (50, 250)
        # An evicted process still alive is captured again when its stacks are named.
        frames = sym.user_frames(1000, [0x400000 + 0x1000], adjust_return_addresses=False)
    assert frames[0][1] == TRUE


def test_trim_evicts_the_least_recently_used_down_to_a_size() -> None:
    dropped: list[str] = []
    lru: Lru[str, int] = Lru(10, lambda k, _v: dropped.append(k))
    for key in "abcde":
        lru[key] = 1
    lru.get("a")  # used again: kept
    assert lru.trim(2) == 3
    assert list(lru) == ["e", "a"]
    assert dropped == ["b", "c", "d"]
    assert lru.evicted == 3
    assert lru.trim(5) == 0
