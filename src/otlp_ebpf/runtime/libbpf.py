"""A thin ctypes binding to libbpf.so.1: only the calls the runtime uses, typed once.

libbpf 1.x returns NULL + errno from pointer functions and a negative errno from int
functions; `check_ptr` / `check_int` turn both into OSError. Every pointer-returning function
needs `restype = c_void_p`, or ctypes truncates the pointer to a C int.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Any

from otlp_ebpf.errors import EnvironmentLacks

LIBBPF_NAMES = ("libbpf.so.1", "libbpf.so")

PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
RINGBUF_SAMPLE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)


class UprobeOpts(Structure):
    """struct bpf_uprobe_opts as of libbpf 1.1 (sz first, as every libbpf opts struct)."""

    _fields_ = [
        ("sz", c_size_t),
        ("ref_ctr_offset", c_size_t),
        ("bpf_cookie", c_uint64),
        ("retprobe", c_bool),
        ("func_name", c_char_p),
    ]


class BatchOpts(Structure):
    """struct bpf_map_batch_opts."""

    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class BtfType(Structure):
    """struct btf_type: name_off, info (vlen | kind << 24 | kind_flag << 31), size/type."""

    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


class BtfVarSecinfo(Structure):
    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


class BtfEnum(Structure):
    _fields_ = [("name_off", c_uint32), ("val", ctypes.c_int32)]


class BpfProgInfo(Structure):
    """struct bpf_prog_info up to the run-time statistics (stable UAPI layout)."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", c_uint32),
        ("gpl_compatible", c_uint32),
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("nr_jited_ksyms", c_uint32),
        ("nr_jited_func_lens", c_uint32),
        ("jited_ksyms", c_uint64),
        ("jited_func_lens", c_uint64),
        ("btf_id", c_uint32),
        ("func_info_rec_size", c_uint32),
        ("func_info", c_uint64),
        ("nr_func_info", c_uint32),
        ("nr_line_info", c_uint32),
        ("line_info", c_uint64),
        ("jited_line_info", c_uint64),
        ("nr_jited_line_info", c_uint32),
        ("line_info_rec_size", c_uint32),
        ("jited_line_info_rec_size", c_uint32),
        ("nr_prog_tags", c_uint32),
        ("prog_tags", c_uint64),
        ("run_time_ns", c_uint64),
        ("run_cnt", c_uint64),
        ("recursion_misses", c_uint64),
        ("verified_insns", c_uint32),
        ("attach_btf_obj_id", c_uint32),
        ("attach_btf_id", c_uint32),
    ]


# name: (restype, argtypes)
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_major_version": (c_uint32, []),
    "libbpf_minor_version": (c_uint32, []),
    "libbpf_set_print": (c_void_p, [PRINT_FN]),
    "libbpf_num_possible_cpus": (c_int, []),
    "libbpf_probe_bpf_prog_type": (c_int, [c_int, c_void_p]),
    "libbpf_probe_bpf_map_type": (c_int, [c_int, c_void_p]),
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__btf": (c_void_p, [c_void_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
    "bpf_program__set_expected_attach_type": (c_int, [c_void_p, c_uint32]),
    "bpf_program__autoload": (c_bool, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_program__attach_perf_event": (c_void_p, [c_void_p, c_int]),
    "bpf_program__attach_uprobe_opts": (
        c_void_p,
        [c_void_p, c_int, c_char_p, c_size_t, POINTER(UprobeOpts)],
    ),
    "bpf_link__destroy": (c_int, [c_void_p]),
    "bpf_link__fd": (c_int, [c_void_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__type": (c_int, [c_void_p]),
    "bpf_map__key_size": (c_uint32, [c_void_p]),
    "bpf_map__value_size": (c_uint32, [c_void_p]),
    "bpf_map__max_entries": (c_uint32, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, POINTER(c_size_t)]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_lookup_and_delete_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32), POINTER(BatchOpts)],
    ),
    "bpf_map_lookup_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32), POINTER(BatchOpts)],
    ),
    "bpf_enable_stats": (c_int, [c_int]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, POINTER(c_uint32)]),
    "ring_buffer__new": (c_void_p, [c_int, RINGBUF_SAMPLE_FN, c_void_p, c_void_p]),
    "ring_buffer__poll": (c_int, [c_void_p, c_int]),
    "ring_buffer__consume": (c_int, [c_void_p]),
    "ring_buffer__free": (None, [c_void_p]),
    "btf__find_by_name_kind": (c_int, [c_void_p, c_char_p, c_uint]),
    "btf__type_by_id": (c_void_p, [c_void_p, c_uint32]),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_uint32]),
    "btf__type_cnt": (c_uint32, [c_void_p]),
    "btf__load_vmlinux_btf": (c_void_p, []),
    "btf__free": (None, [c_void_p]),
}

_lib: ctypes.CDLL | None = None
_libc: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    """libbpf with every signature declared; EnvironmentLacks (exit 3) when it is missing."""
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def _load() -> ctypes.CDLL:
    last: OSError | None = None
    for name in LIBBPF_NAMES:
        try:
            handle = ctypes.CDLL(name, use_errno=True)
            break
        except OSError as exc:
            last = exc
    else:
        raise EnvironmentLacks(
            f"libbpf is not installed ({last})",
            hint="install it: apt-get install libbpf1 (or run `make setup`)",
        )
    for fname, (restype, argtypes) in _SIGNATURES.items():
        func = getattr(handle, fname, None)
        if func is None:
            continue  # older libbpf: callers check `has()` before using optional calls
        func.restype = restype
        func.argtypes = argtypes
    return handle


def has(name: str) -> bool:
    return getattr(lib(), name, None) is not None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.vsnprintf.restype = c_int
        _libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
        _libc.syscall.restype = ctypes.c_long
    return _libc


def version() -> str:
    return f"{lib().libbpf_major_version()}.{lib().libbpf_minor_version()}"


def os_error(err: int, what: str) -> OSError:
    err = abs(err) or errno.EINVAL
    return OSError(err, f"{what}: {os.strerror(err)}")


def check_int(ret: int, what: str) -> int:
    if ret < 0:
        raise os_error(ret, what)
    return ret


def check_ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        raise os_error(ctypes.get_errno(), what)
    return ptr
