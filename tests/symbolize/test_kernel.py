"""Kernel symbols from kallsyms text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from otlp_ebpf.symbolize.kernel import KernelSymbols

KALLSYMS = b"""\
ffffffff81000000 T _stext
ffffffff81000100 t helper_local
ffffffff81000200 D some_data
ffffffff81000300 W weak_func
ffffffff81000400 T vfs_read
ffffffffc0200000 t nf_hook_entry\t[nf_tables]
ffffffffc0201000 t bpf_prog_6deef7357e7b4530_handle\t[bpf]
"""


def test_addresses_resolve_to_the_covering_text_symbol() -> None:
    kernel = KernelSymbols.parse(KALLSYMS)
    assert kernel.resolve(0xFFFFFFFF81000100) == "helper_local"
    # Data symbols are not functions: the address stays with the preceding text symbol.
    assert kernel.resolve(0xFFFFFFFF81000250) == "helper_local"
    assert kernel.resolve(0xFFFFFFFF81000310) == "weak_func"
    assert kernel.resolve(0xFFFFFFFF81000420) == "vfs_read"


def test_module_symbols_carry_their_module() -> None:
    kernel = KernelSymbols.parse(KALLSYMS)
    symbol = kernel.lookup(0xFFFFFFFFC0200010)
    assert symbol is not None
    assert (symbol.name, symbol.module, symbol.offset) == ("nf_hook_entry", "nf_tables", 0x10)
    bpf = kernel.lookup(0xFFFFFFFFC0201004)
    assert bpf is not None and bpf.module == "bpf"
    vfs = kernel.lookup(0xFFFFFFFF81000400)
    assert vfs is not None and vfs.module == ""


def test_unknown_addresses_resolve_to_hex() -> None:
    kernel = KernelSymbols.parse(KALLSYMS)
    assert kernel.resolve(0xFFFFFFFF80000000) == "0xffffffff80000000"
    far_past_last = 0xFFFFFFFFC0201000 + (1 << 21)
    assert kernel.resolve(far_past_last) == f"0x{far_past_last:x}"


def test_unsorted_input_is_sorted() -> None:
    lines = KALLSYMS.splitlines()
    kernel = KernelSymbols.parse(b"\n".join(reversed(lines)))
    assert kernel.resolve(0xFFFFFFFF81000110) == "helper_local"
    assert len(kernel) == 6


@settings(max_examples=200, deadline=None)
@given(
    image=st.lists(st.integers(0, 2**20), min_size=1, max_size=40, unique=True),
    strays=st.lists(st.integers(0, 2**20), max_size=10, unique=True),
)
def test_image_in_order_then_strays_resolve_every_symbol(
    image: list[int], strays: list[int]
) -> None:
    """kallsyms' shape: the image in address order, then modules and BPF programs anywhere."""
    base = 0xFFFFFFFF81000000
    strays = [a for a in strays if a not in image]
    lines = [f"{base + a * 16:016x} T img_{a}" for a in sorted(image)]
    lines += [f"{base + a * 16:016x} t stray_{a}\t[mod]" for a in strays]
    kernel = KernelSymbols.parse("\n".join(lines).encode())

    assert len(kernel) == len(image) + len(strays)
    for a in image:
        assert kernel.resolve(base + a * 16 + 3) == f"img_{a}"
    for a in strays:
        found = kernel.lookup(base + a * 16)
        assert found is not None and (found.name, found.module) == (f"stray_{a}", "mod")


def test_restricted_kallsyms_resolves_nothing() -> None:
    restricted = b"0000000000000000 T _stext\n0000000000000000 T vfs_read\n"
    kernel = KernelSymbols.parse(restricted)
    assert kernel.restricted
    assert kernel.resolve(0xFFFFFFFF81000000) == "0xffffffff81000000"


def test_real_kallsyms_loads_and_resolves_a_known_function() -> None:
    kernel = KernelSymbols.load()  # how long this takes: bench/symbolize.py
    assert len(kernel) > 10_000
    assert not kernel.restricted
    with open("/proc/kallsyms") as fh:
        addr = next(int(line.split()[0], 16) for line in fh if line.split()[2] == "vfs_read")
    assert kernel.resolve(addr + 7) == "vfs_read"
