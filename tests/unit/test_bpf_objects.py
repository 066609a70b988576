"""Every shipped BPF object exists and is not older than its source (or a shared header)."""

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
