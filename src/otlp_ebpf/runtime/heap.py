"""The tool's own heap: large blocks go back to the system when they are freed.

glibc serves a block above its mmap threshold with a mapping of its own, returned when the
block is freed, but it raises that threshold to the size of each such block freed (up to
32 MiB). From then on blocks of that size come from the main heap, and once freed there they
stay in the process's memory while anything allocated later sits above them. A profiler
frees large blocks all the time (unwind tables read from the decoding child or the disk
cache, ELF sections, copied stacks, batches of samples), so under process churn its heap
grew in steps that never came back. A fixed threshold keeps every large block in its own
mapping.
"""

from __future__ import annotations

import ctypes
import gc

from otlp_ebpf.runtime import libbpf

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
LARGE_BLOCK_BYTES = 128 * 1024  # glibc's initial threshold, kept fixed


def return_large_blocks() -> bool:
    """Keep blocks of LARGE_BLOCK_BYTES and more out of the main heap (glibc only); returns
    whether the allocator took the setting. Idempotent; call it before the work starts."""
    try:
        mallopt = libbpf.libc().mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no such threshold to raise): nothing to set
    mallopt.restype = ctypes.c_int
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES))


def freeze_long_lived() -> None:
    """Collect, then move every object alive now out of the cycle collector's reach for good
    (`gc.freeze`): a long run's modules, BPF objects and settings are never garbage, and each
    full collection walked all of them again (7% of an idle agent's CPU)."""
    gc.collect()
    gc.freeze()


def release_free_memory(collect: bool = True) -> bool:
    """After large frees (caches trimmed): collect cycles (with `collect`), then hand the
    allocator's free pages back to the system (glibc `malloc_trim(0)`: free pages anywhere in
    the heap, not only at its top; ~4 ms on a fragmented 250 MB heap). Returns whether any
    memory went back (False off glibc)."""
    if collect:
        gc.collect()
    try:
        malloc_trim = libbpf.libc().malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.restype = ctypes.c_int
    malloc_trim.argtypes = [ctypes.c_size_t]
    return bool(malloc_trim(0))
