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
    RecordedMapping,
    kernel_dev,
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


def test_the_device_of_a_mapping_is_read_in_st_dev_encoding() -> None:
    mapping = parse_maps_line("1000-2000 r-xp 00000000 fe:01 77 /usr/bin/true")
    assert mapping is not None and mapping.dev == os.makedev(0xFE, 1)
    assert kernel_dev((0xFE << 20) | 1) == os.makedev(0xFE, 1)


def _recorded(path: str, st: os.stat_result, *, start: int = 0x1000) -> RecordedMapping:
    return RecordedMapping(start, start + 0x1000, 0, st.st_ino, st.st_dev, path, executable=True)


def test_maps_recorded_at_exit_find_their_files_by_path_or_by_inode(tmp_path: Path) -> None:
    """A file mapped by no process seen is opened by the recorded path when it is that inode;
    a file held already is found by (device, inode) even when the path was cut short."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"\x7fELF one")
    second.write_bytes(b"\x7fELF two")
    files = OpenFiles()
    try:
        st1, st2 = first.stat(), second.stat()
        recorded = [
            _recorded(str(first), st1),
            RecordedMapping(0x3000, 0x4000, 0, 0, 0, "", executable=True, vdso=True),
            RecordedMapping(0x8000, 0x9000, 0, 0, 0, "", executable=False, stack=True),
        ]
        maps = ProcessMaps.from_recorded(42, recorded, files, 7, b"vdso image")
        code = maps.find(0x1800)
        assert code is not None and code.file_id is not None and code.path == str(first)
        assert Path(files.path_of(code.file_id)).read_bytes() == b"\x7fELF one"
        assert maps.vdso_image == b"vdso image" and maps.start_time == 7
        assert maps.find(0x3000).path == "[vdso]"  # type: ignore[union-attr]
        assert maps.find(0x8800).path == "[stack]"  # type: ignore[union-attr]
        # Found again by (device, inode) with no path at all.
        again = ProcessMaps.from_recorded(43, [_recorded("", st1, start=0x5000)], files)
        assert again.mappings[0].file_id == code.file_id and again.mappings[0].path == str(first)
    finally:
        files.close()
    # A path that names another file now (the mapped one replaced) is not taken for it.
    fresh = OpenFiles()
    try:
        replaced = RecordedMapping(0x1000, 0x2000, 0, st1.st_ino, st1.st_dev, str(second), True)
        assert ProcessMaps.from_recorded(44, [replaced], fresh).mappings[0].file_id is None
        assert st2.st_ino != st1.st_ino
    finally:
        fresh.close()


def test_beyond_its_cap_the_least_recently_used_file_is_closed(tmp_path: Path) -> None:
    paths = [tmp_path / name for name in ("a", "b", "c")]
    for path in paths:
        path.write_bytes(path.name.encode())
    files = OpenFiles(cap=2)
    try:
        ids = []
        for path in paths[:2]:
            st = path.stat()
            ids.append(files.keep([(str(path), True)], st.st_ino, dev=st.st_dev, path=str(path)))
        first, second = ids
        assert first is not None and second is not None
        files.path_of(first)  # used: the second is now the least recent
        third = files.keep([(str(paths[2]), False)], 0)
        assert third is not None and len(files) == 2 and files.closed == 1
        assert files.is_open(first) and files.is_open(third) and not files.is_open(second)
        assert files.known(second.dev, second.ino) is None  # not found again once closed
        assert Path(files.path_of(first)).read_bytes() == b"a"
    finally:
        files.close()


def test_lines_of_one_file_at_other_addresses_parse_to_their_own_ranges() -> None:
    """The part of a line after the range is parsed once and shared: each process's mapping
    keeps its own addresses."""
    tail = " r-xp 00028000 fe:01 1835 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
    first = parse_maps_line("7f0000028000-7f0000100000" + tail)
    second = parse_maps_line("7f5500028000-7f5500100000" + tail)
    assert first is not None and second is not None
    assert (first.start, first.end) == (0x7F0000028000, 0x7F0000100000)
    assert (second.start, second.end) == (0x7F5500028000, 0x7F5500100000)
    assert first[2:] == second[2:]
    assert first.file_offset(0x7F0000028010) == second.file_offset(0x7F5500028010) == 0x28010


def test_a_held_file_is_found_again_unless_it_was_rewritten_in_place(tmp_path: Path) -> None:
    """A second process mapping a file already held gets it by device and inode, without a
    path; a file written over in place (same inode, new bytes) is not taken for the old one."""
    path = tmp_path / "lib.so"
    path.write_bytes(b"\x7fELF first")
    files = OpenFiles()
    try:
        st = path.stat()
        kept = files.keep([(str(path), True)], st.st_ino, dev=st.st_dev, path=str(path))
        assert kept is not None
        assert files.held(st.st_dev, st.st_ino) == kept
        assert files.held(st.st_dev, st.st_ino + 1) is None
        with open(path, "r+b") as fh:  # the same inode, other content and size
            fh.write(b"\x7fELF second, longer")
        assert path.stat().st_ino == st.st_ino
        assert files.held(st.st_dev, st.st_ino) is None
    finally:
        files.close()
