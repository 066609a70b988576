"""Typed access to BPF maps: lookup, update, iteration, batch drain and per-CPU values."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator
from ctypes import c_uint32
from typing import TypeVar

from otlp_ebpf.runtime import libbpf
from otlp_ebpf.runtime.libbpf import BatchOpts

PERCPU_TYPES = {5, 6, 10, 21}  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE
S = TypeVar("S", bound=ctypes.Structure)
BATCH_BYTES = 8 * 1024 * 1024


def _round8(n: int) -> int:
    return (n + 7) & ~7


class BpfMap:
    """One map of a loaded object. Keys and values are bytes; `*_as` helpers give structs."""

    def __init__(self, ptr: int) -> None:
        lib = libbpf.lib()
        self.name = lib.bpf_map__name(ptr).decode()
        self.fd = lib.bpf_map__fd(ptr)
        self.type = lib.bpf_map__type(ptr)
        self.key_size = lib.bpf_map__key_size(ptr)
        self.value_size = lib.bpf_map__value_size(ptr)
        self.max_entries = lib.bpf_map__max_entries(ptr)
        self.percpu = self.type in PERCPU_TYPES
        self.ncpus = lib.libbpf_num_possible_cpus() if self.percpu else 1
        # Per-CPU values come back as one 8-byte-aligned slot per possible CPU.
        self.slot = _round8(self.value_size) if self.percpu else self.value_size
        self.buffer_size = self.slot * self.ncpus

    def lookup(self, key: bytes) -> bytes | None:
        value = ctypes.create_string_buffer(self.buffer_size)
        ret = libbpf.lib().bpf_map_lookup_elem(self.fd, key, value)
        if ret < 0:
            if -ret == errno.ENOENT:
                return None
            raise libbpf.os_error(ret, f"lookup in {self.name}")
        return value.raw

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        libbpf.check_int(
            libbpf.lib().bpf_map_update_elem(self.fd, key, value, flags), f"update {self.name}"
        )

    def delete(self, key: bytes) -> bool:
        ret = libbpf.lib().bpf_map_delete_elem(self.fd, key)
        if ret < 0 and -ret != errno.ENOENT:
            raise libbpf.os_error(ret, f"delete from {self.name}")
        return ret == 0

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def keys(self) -> Iterator[bytes]:
        """Every key, by get_next_key (works on every map type that has keys)."""
        prev: bytes | None = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            ret = libbpf.lib().bpf_map_get_next_key(self.fd, prev, nxt)
            if ret < 0:
                if -ret == errno.ENOENT:
                    return
                raise libbpf.os_error(ret, f"iterate {self.name}")
            prev = nxt.raw
            yield prev

    def items(self) -> list[tuple[bytes, bytes]]:
        """A consistent-enough copy of the map: batch lookup where the kernel has it."""
        try:
            return self._batch("bpf_map_lookup_batch")
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
        out = []
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                out.append((key, value))
        return out

    def drain(self) -> list[tuple[bytes, bytes]]:
        """Read and delete every entry (lookup_and_delete_batch; per-key fallback)."""
        try:
            return self._batch("bpf_map_lookup_and_delete_batch")
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
        out = []
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:
                out.append((key, value))
            self.delete(key)
        return out

    def _batch(self, call: str) -> list[tuple[bytes, bytes]]:
        # Per-CPU values grow with the machine: bound the buffers by bytes, not entries.
        chunk = max(1, min(self.max_entries, 4096, BATCH_BYTES // max(self.buffer_size, 1)))
        keys = ctypes.create_string_buffer(self.key_size * chunk)
        values = ctypes.create_string_buffer(self.buffer_size * chunk)
        opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
        in_batch = None
        out_batch = ctypes.create_string_buffer(max(self.key_size, 8))
        out: list[tuple[bytes, bytes]] = []
        fn = getattr(libbpf.lib(), call)
        while True:
            count = c_uint32(chunk)
            ret = fn(self.fd, in_batch, out_batch, keys, values, ctypes.byref(count), opts)
            err = -ret if ret < 0 else 0
            # ENOENT marks the last batch, and that batch may still carry entries.
            if err not in (0, errno.ENOENT):
                raise libbpf.os_error(ret, f"{call} on {self.name}")
            # Only the entries returned: the buffers are sized for the largest batch (up to
            # BATCH_BYTES), and copying them whole touched megabytes of pages per read.
            n = count.value
            raw_k = ctypes.string_at(keys, n * self.key_size)
            raw_v = ctypes.string_at(values, n * self.buffer_size)
            for i in range(n):
                out.append(
                    (
                        raw_k[i * self.key_size : (i + 1) * self.key_size],
                        raw_v[i * self.buffer_size : (i + 1) * self.buffer_size],
                    )
                )
            if err == errno.ENOENT:
                return out
            in_batch = ctypes.create_string_buffer(out_batch.raw, len(out_batch))

    def per_cpu(self, value: bytes) -> list[bytes]:
        """Split a per-CPU value into one `value_size` slice per possible CPU."""
        return [value[i * self.slot : i * self.slot + self.value_size] for i in range(self.ncpus)]

    def lookup_u64(self, key: int) -> int:
        """Sum of a u64 counter under an integer key (summed across CPUs for per-CPU maps)."""
        raw = self.lookup(key.to_bytes(self.key_size, "little"))
        if raw is None:
            return 0
        slices = self.per_cpu(raw) if self.percpu else [raw]
        return sum(int.from_bytes(s[:8], "little") for s in slices)
