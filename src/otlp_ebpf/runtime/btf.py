"""Read types from BTF: struct layouts of our objects (to check the ctypes mirrors) and kernel
enums (drop reasons) from the running kernel, so nothing is a hard-coded table."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from functools import cache

from otlp_ebpf.runtime import libbpf
from otlp_ebpf.runtime.libbpf import BtfEnum, BtfType
from otlp_ebpf.runtime.loader import BpfObject

BTF_KIND_STRUCT = 4
BTF_KIND_ENUM = 6
BTF_KIND_TYPEDEF = 8
BTF_KIND_FUNC = 12


class BtfMember(ctypes.Structure):
    _fields_ = [
        ("name_off", ctypes.c_uint32),
        ("type", ctypes.c_uint32),
        ("offset", ctypes.c_uint32),
    ]


def _type(btf: int, type_id: int) -> BtfType:
    return BtfType.from_address(libbpf.lib().btf__type_by_id(btf, type_id))


def _name(btf: int, off: int) -> str:
    return str(libbpf.lib().btf__name_by_offset(btf, off).decode())


def struct_layout(obj: BpfObject, name: str) -> tuple[int, dict[str, int]]:
    """(size, {member: byte offset}) of struct `name` in the object's BTF."""
    btf = libbpf.check_ptr(libbpf.lib().bpf_object__btf(obj.handle), "object BTF")
    type_id = libbpf.lib().btf__find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT)
    if type_id < 0:
        raise KeyError(f"struct {name} not in {obj.path.name}")
    struct = _type(btf, type_id)
    vlen = struct.info & 0xFFFF
    base = ctypes.addressof(struct) + ctypes.sizeof(BtfType)
    members = {}
    for i in range(vlen):
        member = BtfMember.from_address(base + i * ctypes.sizeof(BtfMember))
        members[_name(btf, member.name_off)] = (member.offset & 0xFFFFFF) // 8
    return struct.size_or_type, members


@cache
def kernel_enum(name: str) -> dict[int, str]:
    """Value -> name of a kernel enum (e.g. skb_drop_reason) from /sys/kernel/btf/vmlinux."""
    btf = libbpf.lib().btf__load_vmlinux_btf()
    if not btf:
        return {}
    try:
        type_id = libbpf.lib().btf__find_by_name_kind(btf, name.encode(), BTF_KIND_ENUM)
        if type_id < 0:
            return {}
        enum = _type(btf, type_id)
        base = ctypes.addressof(enum) + ctypes.sizeof(BtfType)
        values = {}
        for i in range(enum.info & 0xFFFF):
            entry = BtfEnum.from_address(base + i * ctypes.sizeof(BtfEnum))
            values[int(entry.val)] = _name(btf, entry.name_off)
        return values
    finally:
        libbpf.lib().btf__free(btf)


@cache
def kernel_has_function(name: str) -> bool:
    """Whether the running kernel's BTF has function `name` (a kfunc a program calls)."""
    btf = libbpf.lib().btf__load_vmlinux_btf()
    if not btf:
        return False
    try:
        return libbpf.lib().btf__find_by_name_kind(btf, name.encode(), BTF_KIND_FUNC) > 0
    finally:
        libbpf.lib().btf__free(btf)


def kernel_btf_tracepoints(names: Iterable[str]) -> frozenset[str]:
    """Which of `names` the running kernel offers to tp_btf and raw_tp programs: each such
    tracepoint has a `btf_trace_NAME` typedef in /sys/kernel/btf/vmlinux."""
    btf = libbpf.lib().btf__load_vmlinux_btf()
    if not btf:
        return frozenset()
    try:
        find = libbpf.lib().btf__find_by_name_kind
        return frozenset(
            name for name in names if find(btf, f"btf_trace_{name}".encode(), BTF_KIND_TYPEDEF) > 0
        )
    finally:
        libbpf.lib().btf__free(btf)
