"""Every shipped BPF object exists and is not older than its source (or a shared header)."""

import os

from otlp_ebpf.runtime.objects import bpf_dir, object_status


def test_every_source_has_a_fresh_object():
    status = object_status()
    assert status, f"no BPF sources found in {bpf_dir()}"
    stale = [(name, detail) for name, ok, detail in status if not ok]
    assert not stale, f"rebuild with `make bpf`: {stale}"


def test_objects_carry_btf_but_no_dwarf():
    from elftools.elf.elffile import ELFFile

    for obj in bpf_dir().glob("*.bpf.o"):
        with obj.open("rb") as fh:
            names = {s.name for s in ELFFile(fh).iter_sections()}
        assert ".BTF" in names, obj.name
        assert ".debug_info" not in names, f"{obj.name} was not stripped"


def test_installed_packages_do_not_judge_objects_by_file_times(monkeypatch, tmp_path):
    # pip writes a wheel's files in archive order, so a header can look newer than an object.
    from otlp_ebpf.runtime import objects

    (tmp_path / "x.bpf.c").write_text('#include "x.h"\n')
    (tmp_path / "x.bpf.o").write_bytes(b"")
    (tmp_path / "x.h").write_text("")
    os.utime(tmp_path / "x.bpf.o", (1_000_000, 1_000_000))
    monkeypatch.setattr(objects, "bpf_dir", lambda: tmp_path)
    monkeypatch.setattr(objects, "source_checkout", lambda: True)
    assert objects.object_status() == [("x.bpf.o", False, "older than its source")]
    monkeypatch.setattr(objects, "source_checkout", lambda: False)
    assert objects.object_status()[0][1] is True
