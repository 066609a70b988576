"""doctor lists every attach point of every BPF object, read from the compiled objects."""

from __future__ import annotations

import json

import pytest
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from otlp_ebpf.cli.app import run
from otlp_ebpf.runtime.objects import bpf_dir


def programs_in_elf() -> set[tuple[str, str, str]]:
    """(object, program, section) of every BPF program, read from the ELF files directly:
    global functions in executable sections other than .text (which holds subprograms)."""
    found = set()
    for path in sorted(bpf_dir().glob("*.bpf.o")):
        with path.open("rb") as fh:
            elf = ELFFile(fh)
            sections = list(elf.iter_sections())
            for sym in elf.get_section_by_name(".symtab").iter_symbols():
                if sym["st_info"]["type"] != "STT_FUNC" or sym["st_info"]["bind"] != "STB_GLOBAL":
                    continue
                section = sections[sym["st_shndx"]]
                if section.name != ".text" and section["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
                    found.add((path.name, sym.name, section.name))
    return found


@pytest.fixture(scope="module")
def doctor_json() -> dict:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run(["doctor", "--json"])  # exit 3 without privileges: the listing is there all the same
    return json.loads(out.getvalue())


def test_doctor_json_lists_every_program_of_every_object(doctor_json: dict) -> None:
    listed = {(p["object"], p["program"], p["section"]) for p in doctor_json["attach_points"]}
    expected = programs_in_elf()
    assert len(expected) > 30
    assert listed == expected


def test_every_tracepoint_section_has_its_own_check(doctor_json: dict) -> None:
    checks = {c["name"]: c for c in doctor_json["checks"]}
    tracepoints = {s.removeprefix("tp/") for _, _, s in programs_in_elf() if s.startswith("tp/")}
    assert {"tcp/tcp_destroy_sock", "kmem/kmem_cache_alloc", "kmem/kmem_cache_free"} <= tracepoints
    for tracepoint in tracepoints:
        assert f"tracepoint {tracepoint}" in checks
    assert checks["tracepoint tcp/tcp_destroy_sock"]["detail"] == "used by net"
    for point in doctor_json["attach_points"]:
        assert point["check"] in checks
        assert point["ok"] == checks[point["check"]]["ok"]
