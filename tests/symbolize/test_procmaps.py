"""/proc/PID/maps parsing and capture."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from otlp_ebpf.errors import UsageError
from otlp_ebpf.symbolize.procmaps import (
    OpenFiles,
    ProcessMaps,
    parse_maps_line,
    process_start_time,
)


def test_file_mapping_line() -> None:
    line = (
        "7f12a0000000-7f12a0195000 r-xp 00028000 08:01 1835 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
    )
    mapping = parse_maps_line(line)
    assert mapping is not None
    assert (mapping.start, mapping.end, mapping.offset) == (0x7F12A0000000, 0x7F12A0195000, 0x28000)
    assert mapping.executable and mapping.is_file and not mapping.deleted
    assert mapping.basename == "libc.so.6"
    assert mapping.file_offset(0x7F12A0000010) == 0x28010


def test_deleted_file_with_spaces_in_its_name() -> None:
    mapping = parse_maps_line("1000-2000 r-xp 00000000 08:01 77 /tmp/my prog (deleted)")
    assert mapping is not None
    assert mapping.path == "/tmp/my prog" and mapping.deleted


def test_anonymous_and_pseudo_mappings() -> None:
    anon = parse_maps_line("1000-2000 rwxp 00000000 00:00 0")
    vdso = parse_maps_line("3000-5000 r-xp 00000000 00:00 0                  [vdso]")
    assert anon is not None and anon.path == "" and not anon.is_file
    assert vdso is not None and vdso.path == "[vdso]" and vdso.basename == "[vdso]"


def test_malformed_lines_are_skipped() -> None:
    assert parse_maps_line("") is None
    assert parse_maps_line("zz-yy r-xp 0 08:01 1 /x") is None


def test_capture_of_this_process_keeps_its_libc_open_and_reads_the_vdso() -> None:
    files = OpenFiles()
    try:
        maps = ProcessMaps.capture(os.getpid(), files)
        qsort = ctypes.cast(ctypes.CDLL(None).qsort, ctypes.c_void_p).value
        assert qsort is not None
        mapping = maps.find(qsort)
        assert mapping is not None and mapping.basename == "libc.so.6"
        assert mapping.file_id is not None
        kept = Path(files.path_of(mapping.file_id))
        assert kept.stat().st_ino == mapping.inode
        assert maps.vdso_image.startswith(b"\x7fELF")
        assert maps.start_time == process_start_time(os.getpid()) > 0
        assert maps.find(0x10) is None
        # A second capture opens nothing new: one descriptor per distinct file.
        held = len(files)
        ProcessMaps.capture(os.getpid(), files)
        assert len(files) == held
    finally:
        files.close()
    assert len(files) == 0


def test_capture_of_a_missing_process_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="process 123 not found"):
        ProcessMaps.capture(123, proc_root=str(tmp_path))
    assert process_start_time(123, str(tmp_path)) == 0


def test_refresh_reads_a_perf_map_once_it_changes(tmp_path: Path) -> None:
    proc = tmp_path / "55"
    (proc / "root" / "tmp").mkdir(parents=True)
    (proc / "maps").write_text("1000-2000 rwxp 00000000 00:00 0\n")
    maps = ProcessMaps.capture(55, proc_root=str(tmp_path))
    assert maps.perf_map is None and not maps.refresh_perf_map()
    (proc / "root" / "tmp" / "perf-55.map").write_text("1000 10 jitted\n")
    assert maps.refresh_perf_map()
    assert maps.perf_map is not None and maps.perf_map.lookup(0x1004) == "jitted"
    assert not maps.refresh_perf_map()
