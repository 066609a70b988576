"""The libbpf runtime against the real kernel: load, .rodata, attach, maps, ring buffer, BTF."""

from __future__ import annotations

import ctypes
import os

import pytest

from otlp_ebpf.collectors.syscalls import (
    ErrnoKey,
    ErrnoPair,
    ExitErrno,
    ExitEvent,
    ExitRow,
    ExitRows,
    ProcUsage,
    SyscallKey,
    SyscallStats,
)
from otlp_ebpf.errors import EnvironmentLacks, RuntimeFailure
from otlp_ebpf.runtime import btf, probes
from otlp_ebpf.runtime.events import RingBuffer
from otlp_ebpf.runtime.loader import BpfObject, load_error
from otlp_ebpf.runtime.selftest import PROBE_FD, SelftestEvent, make_calls, open_selftest

pytestmark = pytest.mark.bpf


def test_rodata_is_read_from_btf_and_refused_after_load():
    obj = BpfObject.open("selftest")
    try:
        layout = obj.rodata_layout()
        assert set(layout) >= {"probe_tgid", "probe_nr", "wakeup_bytes"}
        assert layout["wakeup_bytes"][1] == 8
        with pytest.raises(KeyError, match=r"no \.rodata variable"):
            obj.set_rodata(nonexistent=1)
        obj.set_rodata(probe_tgid=os.getpid())
        obj.load()
        with pytest.raises(RuntimeError, match="before load"):
            obj.set_rodata(probe_tgid=1)
    finally:
        obj.close()


def test_tracepoint_map_and_ring_buffer_round_trip():
    with open_selftest(wakeup_bytes=1 << 20) as obj:
        link = probes.attach_auto(obj, "selftest_enter")
        assert link.attached
        events: list[SelftestEvent] = []
        ring = RingBuffer(
            obj.map("events"), lambda raw: events.append(SelftestEvent.from_buffer_copy(raw))
        )
        make_calls(25)
        make_calls(5, fd=PROBE_FD + 1)
        # Wakeups are batched (threshold far above 30 events): polling with a timeout still
        # delivers everything.
        ours = lambda: [e for e in events if e.arg0 in (PROBE_FD, PROBE_FD + 1)]  # noqa: E731
        for _ in range(20):
            if len(ours()) >= 30:
                break
            ring.poll(50)
        counted = obj.map("counters").lookup_u64(0)
        ring.poll(0)
        ring.close()
        assert len(ours()) == 30
        assert {e.pid for e in events} == {os.getpid()}
        # Every call the kernel counted arrived (the interpreter may close fds of its own).
        assert counted == len(events)
        assert obj.map("counters").lookup_u64(1) == 0  # nothing dropped
        by_arg = {
            int.from_bytes(k, "little"): int.from_bytes(v, "little")
            for k, v in obj.map("by_arg").items()
        }
        assert by_arg[PROBE_FD] == 25 and by_arg[PROBE_FD + 1] == 5
        drained = obj.map("by_arg").drain()
        assert len(drained) == len(by_arg) and obj.map("by_arg").items() == []


def test_a_bounded_ring_consumes_at_most_its_limit_per_call():
    """A producer faster than the handler (processes exiting under churn) cannot keep a
    bounded poll or drain going: each call takes at most `max_per_poll` records."""
    with open_selftest(wakeup_bytes=1 << 20) as obj:
        probes.attach_auto(obj, "selftest_enter")
        seen: list[int] = []
        ring = RingBuffer(obj.map("events"), lambda raw: seen.append(len(raw)), max_per_poll=4)
        make_calls(30)
        assert ring.drain() == 4 and len(seen) == 4
        assert ring.poll(0) == 4 and len(seen) == 8
        while ring.drain():
            pass
        ring.close()
        assert len(seen) >= 30


def test_per_cpu_values_split_per_possible_cpu():
    with open_selftest() as obj:
        counters = obj.map("counters")
        assert counters.percpu and counters.ncpus >= 1
        raw = counters.lookup((0).to_bytes(4, "little"))
        assert raw is not None and len(counters.per_cpu(raw)) == counters.ncpus


def test_map_resize_before_load():
    obj = BpfObject.open("selftest")
    try:
        obj.resize_map("by_arg", 77)
        obj.set_rodata(probe_tgid=os.getpid())
        obj.load()
        assert obj.map("by_arg").max_entries == 77
    finally:
        obj.close()


def test_ctypes_mirrors_match_the_objects_btf():
    with BpfObject.open("syscalls") as obj:
        for struct, mirror in (
            ("syscall_key", SyscallKey),
            ("syscall_stats", SyscallStats),
            ("errno_key", ErrnoKey),
            ("errno_pair", ErrnoPair),
            ("proc_usage", ProcUsage),
            ("exit_event", ExitEvent),
            ("exit_row", ExitRow),
            ("exit_rows", ExitRows),
            ("exit_errno", ExitErrno),
        ):
            size, members = btf.struct_layout(obj, struct)
            assert size == ctypes.sizeof(mirror), struct
            for name, offset in members.items():
                assert getattr(mirror, name).offset == offset, f"{struct}.{name}"
    with BpfObject.open("selftest") as obj:
        size, members = btf.struct_layout(obj, "selftest_event")
        assert size == ctypes.sizeof(SelftestEvent)
        assert {n: getattr(SelftestEvent, n).offset for n in members} == members


def test_kernel_enums_come_from_vmlinux_btf():
    reasons = btf.kernel_enum("skb_drop_reason")
    assert reasons.get(2) == "SKB_DROP_REASON_NOT_SPECIFIED"
    assert "SKB_DROP_REASON_NO_SOCKET" in reasons.values()
    assert btf.kernel_enum("no_such_enum_anywhere") == {}


def test_disabled_programs_are_not_loaded():
    obj = BpfObject.open("syscalls")
    try:
        for prog in ("btf_sys_enter", "btf_sys_exit"):
            obj.disable(prog)
        obj.load()
        assert not obj.enabled("btf_sys_enter")
        assert obj.program_fd("tp_sys_enter") > 0
    finally:
        obj.close()


def test_cpu_clock_frequency_above_the_kernel_limit_is_refused():
    from otlp_ebpf.errors import UsageError

    with open_selftest() as obj, pytest.raises(UsageError, match="kernel's limit"):
        probes.attach_cpu_clock(obj, "selftest_enter", probes.max_sample_rate() + 1)


def test_load_errors_carry_the_verifier_log(monkeypatch):
    from otlp_ebpf.runtime import loader

    log = "-- BEGIN PROG LOAD LOG --\nR1 invalid mem access 'scalar'\nprocessed 9 insns\n"
    exc = load_error("x.bpf.o", 22, log + "-- END PROG LOAD LOG --\n")
    assert isinstance(exc, RuntimeFailure)
    assert exc.message.endswith("(R1 invalid mem access 'scalar')")
    assert "processed 9 insns" in exc.verifier_log  # type: ignore[attr-defined]
    assert isinstance(load_error("x.bpf.o", 1, ""), RuntimeFailure)  # root: not a privilege issue
    monkeypatch.setattr(loader, "_privileged", lambda: False)
    assert isinstance(load_error("x.bpf.o", 1, ""), EnvironmentLacks)


def test_missing_object_is_an_environment_error(tmp_path):
    with pytest.raises(EnvironmentLacks, match="missing from the installation"):
        BpfObject(tmp_path / "nothing.bpf.o")


REJECTED = r"""
#include "core.h"
char LICENSE[] SEC("license") = "GPL";
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1000); __type(key, u32);
         __type(value, u64); } m SEC(".maps");
SEC("tp/raw_syscalls/sys_enter")
int rejected(void *ctx)
{
	u64 acc = 0;
#pragma unroll
	for (int i = 0; i < 400; i++) {
		u32 k = i;
		u64 *v = bpf_map_lookup_elem(&m, &k);
		if (v) acc += *v;
	}
	return acc + *(volatile u64 *)((char *)ctx + 20000); /* outside the context */
}
"""


def test_a_rejected_program_reports_the_verifiers_reason_with_the_whole_log(tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    from otlp_ebpf.runtime.loader import object_path

    clang = shutil.which("clang")
    assert clang, "clang builds the objects; make setup installs it"
    src = tmp_path / "rejected.bpf.c"
    src.write_text(REJECTED)
    obj_path = tmp_path / "rejected.bpf.o"
    include = str(object_path("core").parent)
    subprocess.run(
        [
            clang,
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            "-I",
            include,
            "-c",
            str(src),
            "-o",
            str(obj_path),
        ],
        check=True,
    )
    obj = BpfObject(Path(obj_path))
    try:
        with pytest.raises(RuntimeFailure) as info:
            obj.load()
    finally:
        obj.close()
    # Root is privileged: the verifier's EACCES is about the program, not about permissions.
    assert "invalid bpf_context access" in info.value.message
    log = info.value.verifier_log  # type: ignore[attr-defined]
    assert len(log) > 100_000 and "processed" in log and "...(truncated)" not in log
