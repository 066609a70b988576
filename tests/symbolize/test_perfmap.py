"""Perf map (JIT) parsing and lookup."""

from __future__ import annotations

import os
from pathlib import Path

from otlp_ebpf.symbolize.perfmap import PerfMap, perf_map_path

SAMPLE = """\
7f0000001000 20 LazyCompile:~main app.js:1
0x7f0000001100 0x80 Function: render (view.js:10)
not a line
7f0000002000 zz bad size
7f0000003000 10
7f0000001000 30 LazyCompile:*main app.js:1
"""


def test_lookup_covers_each_entry_and_nothing_else() -> None:
    perf_map = PerfMap.parse(SAMPLE)
    assert len(perf_map) == 2
    assert perf_map.lookup(0x7F0000001100) == "Function: render (view.js:10)"
    assert perf_map.lookup(0x7F000000117F) == "Function: render (view.js:10)"
    assert perf_map.lookup(0x7F0000001180) is None
    assert perf_map.lookup(0x7F0000000FFF) is None


def test_a_later_entry_for_the_same_start_wins() -> None:
    perf_map = PerfMap.parse(SAMPLE)
    assert perf_map.lookup(0x7F000000102F) == "LazyCompile:*main app.js:1"


def test_load_reads_a_file_and_gives_none_when_absent(tmp_path: Path) -> None:
    path = tmp_path / "perf-1.map"
    path.write_text("1000 10 jitted\n")
    loaded = PerfMap.load(str(path))
    assert loaded is not None and loaded.lookup(0x1008) == "jitted"
    assert PerfMap.load(str(tmp_path / "missing.map")) is None


def test_path_goes_through_the_process_root_with_its_namespace_pid() -> None:
    pid = os.getpid()
    assert perf_map_path(pid) == f"/proc/{pid}/root/tmp/perf-{pid}.map"


def test_path_uses_the_innermost_namespace_pid(tmp_path: Path) -> None:
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "status").write_text("Name:\tnode\nNSpid:\t4242\t7\n")
    assert perf_map_path(4242, str(tmp_path)) == f"{tmp_path}/4242/root/tmp/perf-7.map"
    assert perf_map_path(99, str(tmp_path)) == f"{tmp_path}/99/root/tmp/perf-99.map"


def test_planted_fifos_symlinks_and_devices_are_not_read(tmp_path):
    import os
    import threading

    from otlp_ebpf.symbolize.perfmap import PerfMap

    fifo = tmp_path / "perf-1.map"
    os.mkfifo(fifo)
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(PerfMap.load(str(fifo))), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "a FIFO must not block the reader"
    assert result == [None]
    link = tmp_path / "perf-2.map"
    link.symlink_to("/dev/zero")
    assert PerfMap.load(str(link)) is None
    good = tmp_path / "perf-3.map"
    good.write_text("1000 10 jitted_fn\n")
    loaded = PerfMap.load(str(good))
    assert loaded is not None and loaded.lookup(0x1004) == "jitted_fn"
