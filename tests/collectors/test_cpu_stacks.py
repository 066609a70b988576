"""Pure parts of the cpu collector: stack assembly, merging, config checks, sampler choice."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Sequence
from pathlib import Path

import pytest

from otlp_ebpf.collectors import cpu
from otlp_ebpf.collectors.stack_store import STORED_STACK_DEPTH, StoredStack, read_stored_stacks
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import StackCount
from otlp_ebpf.symbolize.resolver import Symbolizer
from otlp_ebpf.targets import TargetSpec


class NamingSymbolizer(Symbolizer):
    """Names addresses after themselves, so tests see order and placement plainly."""

    def user_frames(
        self, pid: int, addrs: Sequence[int], *, adjust_return_addresses: bool = True
    ) -> list[tuple[str, str]]:
        return [(f"u{a}", "/bin/app") for a in addrs]

    def kernel_frames(
        self, addrs: Sequence[int], *, adjust_return_addresses: bool = True
    ) -> list[str]:
        return [f"k{a}_[k]" if a != 9 else "bpf_prog_abc_handler_[k]" for a in addrs]


def frames(user: tuple[int, ...] | None, kernel: tuple[int, ...] | None) -> tuple[str, ...]:
    return cpu.stack_frames(NamingSymbolizer(), 1, user=user, kernel=kernel)[0]


def test_frames_are_root_first_user_then_kernel() -> None:
    assert frames((3, 2, 1), (6, 5)) == ("u1", "u2", "u3", "k5_[k]", "k6_[k]")
    _, modules = cpu.stack_frames(NamingSymbolizer(), 1, user=(1,), kernel=(2,))
    assert modules == ("/bin/app", cpu.KERNEL_MODULE)


def test_lost_and_missing_stacks_keep_their_samples() -> None:
    assert frames(None, (5,)) == (cpu.LOST_STACK_FRAME, "k5_[k]")
    assert frames((1,), None) == ("u1", cpu.LOST_STACK_FRAME)
    assert frames((), ()) == ("[unknown]",)


def test_tracing_frames_are_dropped_from_the_kernel_leaf() -> None:
    assert frames((1,), (9, 5)) == ("u1", "k5_[k]")
    names = ["bpf_prog_1_x_[k]", "bpf_trace_run4_[k]", "__schedule_[k]", "bpf_prog_2_[k]"]
    assert cpu.without_tracing_frames(names) == ["__schedule_[k]", "bpf_prog_2_[k]"]


def test_stack_ids_map_to_addresses_lost_or_absent() -> None:
    stacks = {4: (10, 20)}
    assert cpu._stack_part(4, stacks) == (10, 20)
    assert cpu._stack_part(-errno.EEXIST, stacks) is None
    assert cpu._stack_part(-errno.EFAULT, stacks) == ()


def test_stored_stacks_read_by_id_skipping_absent_ones() -> None:
    class FakeMap:
        def __init__(self, entries: dict[int, tuple[int, ...]]) -> None:
            self.entries = entries

        def lookup(self, key: bytes) -> bytes | None:
            ips = self.entries.get(int.from_bytes(key, "little", signed=True))
            if ips is None:
                return None
            array = (ctypes.c_uint64 * STORED_STACK_DEPTH)(*ips)
            return bytes(StoredStack(nr=len(ips), ips=array))

    stacks = FakeMap({2**62 + 5: (0x10, 0x20), 7: ()})
    read = read_stored_stacks(stacks, [2**62 + 5, 7, 9, -errno.EEXIST])  # type: ignore[arg-type]
    assert read == {2**62 + 5: (0x10, 0x20), 7: (), 9: ()}


def test_merge_sums_stacks_that_symbolize_alike() -> None:
    merged = cpu.merge_stacks(
        [
            StackCount(1, 1, "x", ("m", "f"), 2, 10),
            StackCount(1, 1, "x", ("m", "g"), 5),
            StackCount(1, 1, "x", ("m", "f"), 3, 20),
        ]
    )
    assert [(s.frames, s.count, s.total_ns) for s in merged] == [
        (("m", "f"), 5, 30),
        (("m", "g"), 5, 0),
    ]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (cpu.CpuConfig(frequency_hz=0), "outside 1.."),
        (cpu.CpuConfig(frequency_hz=10**9), "perf_event_max_sample_rate"),
        (cpu.CpuConfig(user_stacks=False, kernel_stacks=False), "exclude each other"),
        (cpu.CpuConfig(on_cpu=False), "nothing to record"),
        (cpu.CpuConfig(off_cpu=True, min_block_us=-1), "min-block-us"),
        (cpu.CpuConfig(unwind="lbr"), "--unwind"),
        (cpu.CpuConfig(unwind="dwarf", on_cpu=False, off_cpu=True), "--off-cpu-only takes none"),
        (cpu.CpuConfig(unwind="dwarf", user_stacks=False), "--kernel-only records none"),
    ],
)
def test_impossible_settings_are_usage_errors(config: cpu.CpuConfig, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        cpu.check_config(config)


def test_off_cpu_only_ignores_the_frequency() -> None:
    cpu.check_config(cpu.CpuConfig(on_cpu=False, off_cpu=True, frequency_hz=0))


def test_sampler_choice_by_unwind_mode() -> None:
    from otlp_ebpf.collectors.cpu_dwarf import CpuDwarfSampler

    with Symbolizer() as sym:
        assert isinstance(
            cpu.pick_sampler(cpu.CpuConfig(unwind="fp"), sym), cpu.FramePointerSampler
        )
        assert isinstance(cpu.pick_sampler(cpu.CpuConfig(), sym), CpuDwarfSampler)  # auto
        for mode in ("auto", "dwarf"):
            # On-CPU stacks stay DWARF-unwound when off-CPU time is recorded as well.
            both = cpu.pick_sampler(cpu.CpuConfig(off_cpu=True, unwind=mode), sym)
            assert isinstance(both, cpu.CompositeSampler)
            on, off = both.parts
            assert isinstance(on, CpuDwarfSampler) and isinstance(off, cpu.FramePointerSampler)
            assert not off.config.on_cpu and off.config.off_cpu
        off_only = cpu.CpuConfig(on_cpu=False, off_cpu=True)
        assert isinstance(cpu.pick_sampler(off_only, sym), cpu.FramePointerSampler)
        kernel_only = cpu.CpuConfig(user_stacks=False)
        assert isinstance(cpu.pick_sampler(kernel_only, sym), cpu.FramePointerSampler)


def test_unwind_note_says_what_each_kind_of_stack_used() -> None:
    assert cpu.unwind_note(cpu.CpuConfig()) == "auto"
    assert cpu.unwind_note(cpu.CpuConfig(unwind="dwarf", off_cpu=True)) == (
        "dwarf on-CPU, fp off-CPU"
    )
    assert cpu.unwind_note(cpu.CpuConfig(on_cpu=False, off_cpu=True)) == "fp"
    assert cpu.unwind_note(cpu.CpuConfig(user_stacks=False)) == "fp"


def test_repeat_needs_a_command_and_numbers_outputs(tmp_path: Path) -> None:
    from otlp_ebpf.cli import cpu as cli_cpu

    with pytest.raises(UsageError, match="needs a command"):
        cli_cpu.check_repeat(2, cpu.CpuConfig())
    with pytest.raises(UsageError, match="at least 1"):
        cli_cpu.check_repeat(0, cpu.CpuConfig(targets=TargetSpec(command=("true",))))
    runs = cli_cpu.repeated_outputs([f"{tmp_path}/b.json", f"{tmp_path}/f.pb.gz"], None, 2)
    assert [[o.path for o in r] for r in runs] == [
        [f"{tmp_path}/b.1.json", f"{tmp_path}/f.1.pb.gz"],
        [f"{tmp_path}/b.2.json", f"{tmp_path}/f.2.pb.gz"],
    ]
