"""Reading the stacks that stack_store.h keeps: one `stacks` entry per distinct stack, keyed
by its id (a 63-bit hash of the addresses), holding the addresses leaf first."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

from otlp_ebpf.runtime.maps import BpfMap

STORED_STACK_DEPTH = 127


class StoredStack(ctypes.Structure):
    """Mirror of struct stored_stack (bpf/stack_store.h)."""

    _fields_ = [
        ("nr", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("ips", ctypes.c_uint64 * STORED_STACK_DEPTH),
    ]


def addresses_of(raw: bytes) -> tuple[int, ...]:
    """The addresses of one stored stack, leaf first."""
    stack = StoredStack.from_buffer_copy(raw[: ctypes.sizeof(StoredStack)])
    return tuple(stack.ips[: min(stack.nr, STORED_STACK_DEPTH)])


def read_stored_stacks(stacks: BpfMap, ids: Iterable[int]) -> dict[int, tuple[int, ...]]:
    """Addresses of each wanted id; negative ids (no stack) are skipped, an id missing from the
    map gives ()."""
    out: dict[int, tuple[int, ...]] = {}
    for stack_id in set(ids):
        if stack_id < 0:
            continue
        raw = stacks.lookup(stack_id.to_bytes(8, "little", signed=True))
        out[stack_id] = addresses_of(raw) if raw is not None else ()
    return out
