"""The mappings the kernel records at a sampled process's exit (bpf/exit_maps.h): the record's
layout, its decoding, and the maps built from it for a process that is gone."""

from __future__ import annotations

import ctypes
import os
import subprocess
import time

import pytest

from otlp_ebpf.collectors import exit_maps
from otlp_ebpf.collectors.exit_maps import (
    HEADER_BYTES,
    ExitMapping,
    ExitMaps,
    ExitMapsHeader,
    decode,
    path_from_components,
)
from otlp_ebpf.runtime import libbpf, probes
from otlp_ebpf.runtime.btf import struct_layout
from otlp_ebpf.runtime.loader import BpfObject
from otlp_ebpf.symbolize.procmaps import OpenFiles, own_vdso_image


def test_a_path_written_leaf_first_reads_root_first() -> None:
    assert path_from_components(b"libc.so.6\0x86_64-linux-gnu\0lib\0usr\0\0junk") == (
        "/usr/lib/x86_64-linux-gnu/libc.so.6"
    )
    assert path_from_components(b"\0") == ""
    # Bytes that are not UTF-8 stay as they were, so the path still opens.
    assert os.fsencode(path_from_components(b"x\xff\0tmp\0\0")) == b"/tmp/x\xff"


def _set_path(mapping: ExitMapping, raw: bytes) -> None:
    """Every byte of `raw` (assigning to the field would stop at the first NUL)."""
    ctypes.memmove(ctypes.addressof(mapping) + ExitMapping.path.offset, raw, len(raw))


def test_a_record_decodes_to_its_mappings() -> None:
    head = ExitMapsHeader(pid=42, count=2, start_boottime=3 * 10**9, more=1)
    code = ExitMapping(start=0x1000, end=0x2000, offset=0x3000, inode=77, dev=(8 << 20) | 1)
    code.flags = exit_maps.MAP_EXEC
    _set_path(code, b"true\0bin\0usr\0\0")
    cut = ExitMapping(start=0x5000, end=0x6000, inode=78, dev=(8 << 20) | 1)
    cut.flags = exit_maps.MAP_EXEC | exit_maps.MAP_PATH_CUT
    _set_path(cut, b"partial\0")
    record = decode(bytes(head) + bytes(code) + bytes(cut))
    assert record.pid == 42 and record.left_out == 1
    assert record.start_time == 3 * os.sysconf("SC_CLK_TCK")
    first, second = record.mappings
    assert (first.start, first.end, first.offset, first.inode) == (0x1000, 0x2000, 0x3000, 77)
    assert first.dev == os.makedev(8, 1) and first.path == "/usr/bin/true"
    assert first.executable and not first.stack and not first.vdso
    assert second.path == ""  # cut short: found by (device, inode) only
    # A count larger than the bytes present is not trusted.
    assert len(decode(bytes(ExitMapsHeader(pid=1, count=9))).mappings) == 0


@pytest.mark.parametrize("name", ["cpu", "cpu_dwarf"])
def test_ctypes_mirrors_match_the_objects_btf(name: str) -> None:
    with BpfObject.open(name) as obj:
        for struct, mirror in (("exit_maps", ExitMapsHeader), ("exit_mapping", ExitMapping)):
            size, offsets = struct_layout(obj, struct)
            for field, *_ in mirror._fields_:
                assert offsets[field] == getattr(mirror, field).offset, f"{struct}.{field}"
            if mirror is ExitMapping:
                assert size == ctypes.sizeof(mirror)
            else:
                assert offsets["maps"] == HEADER_BYTES


@pytest.mark.bpf
def test_a_process_gone_is_recorded_with_its_code_mappings() -> None:
    """A sampled process that exits is recorded with its executable mappings, their files
    (found again by path), its stack and its vDSO: the maps it had."""
    if not exit_maps.supported():
        pytest.skip("the kernel has no task VMA iterator (bpf_iter_task_vma_new, 6.7+)")
    obj = BpfObject.open("cpu_dwarf")
    files = OpenFiles()
    try:
        obj.resize_map("scratch", libbpf.lib().libbpf_num_possible_cpus())
        obj.load()
        exits = ExitMaps(obj)
        probes.attach_auto(obj, "dwarf_exit")
        child = subprocess.Popen(["/bin/sleep", "30"])
        try:
            time.sleep(0.1)  # the maps of an exec'd process are complete once it sleeps
            live = {m.start: m for m in _proc_maps(child.pid) if m.executable}
            # The exit program records processes that were sampled: mark this one so.
            obj.map("announced").update(child.pid.to_bytes(4, "little"), b"\x01")
        finally:
            child.kill()
            child.wait()
        maps = exits.maps_of(child.pid, files)
        assert maps is not None
        recorded = {m.start: m for m in maps.mappings if m.path != "[stack]"}
        assert recorded.keys() == live.keys() - {0xFFFFFFFFFF600000}  # [vsyscall]: no VMA
        for start, mapping in live.items():
            if mapping.is_file:
                assert recorded[start].path == mapping.path
                assert recorded[start].offset == mapping.offset
                assert recorded[start].file_id is not None
        assert maps.vdso_image == own_vdso_image() != b""
        assert any(m.path == "[stack]" for m in maps.mappings)
        assert exits.lost() == 0
        exits.close()
    finally:
        files.close()
        obj.close()


def _proc_maps(pid: int) -> list:
    from otlp_ebpf.symbolize.procmaps import parse_maps_line

    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as fh:
        return [m for line in fh if (m := parse_maps_line(line))]
