"""mem: table rendering, block aggregation, stack parsing, allocator resolution, CLI checks."""

from __future__ import annotations

import ctypes
import io
import os
from pathlib import Path

import pytest
from rich.console import Console

from otlp_ebpf.cli.app import run
from otlp_ebpf.collectors import mem, mem_allocator
from otlp_ebpf.collectors.mem import (
    AllocInfo,
    AllocKey,
    aggregate_blocks,
    return_addresses_to_calls,
)
from otlp_ebpf.collectors.stack_store import STORED_STACK_DEPTH, StoredStack, addresses_of
from otlp_ebpf.formatters import mem_table
from otlp_ebpf.model import Allocation, MemSnapshot, StackCount, snapshot_from_dict
from otlp_ebpf.runtime import uprobe_multi
from tests.conftest import build_c


def snapshot(**fields: object) -> MemSnapshot:
    leak = Allocation(
        pid=42, frames=("main", "parse", "leak_here"), bytes=69632, count=17, comm="srv"
    )
    small = Allocation(pid=42, frames=("main", "[x]"), bytes=100, count=1, comm="srv")
    defaults: dict[str, object] = {
        "started_at": "2025-01-01T00:00:00+00:00",
        "duration_s": 1.0,
        "host": "h",
        "outstanding": (leak, small),
        "outstanding_bytes": 69732,
    }
    defaults.update(fields)
    return MemSnapshot(**defaults)  # type: ignore[arg-type]


def render(snap: MemSnapshot, top: int | None = 10) -> str:
    buffer = io.StringIO()
    mem_table.render_table(snap, Console(file=buffer, width=120, no_color=True), top=top)
    return buffer.getvalue()


def test_table_lists_stacks_leaf_first_with_bytes_and_counts() -> None:
    text = render(snapshot())
    assert text.startswith("69,632 bytes in 17 allocations from srv (42)\n    leak_here\n")
    assert "    [x]\n" in text  # user text is escaped, not taken as markup
    assert "outstanding: 69,732 bytes (68.1 KiB) in 18 allocations from 2 stacks" in text


def test_table_top_hides_the_rest_and_says_so() -> None:
    text = render(snapshot(), top=1)
    assert "100 bytes" not in text
    assert "... 1 more stacks (--top 0 shows all)" in text


def test_table_kernel_mode_page_faults_and_empty() -> None:
    kernel = Allocation(pid=0, frames=("do_sys_open_[k]",), bytes=64, count=1)
    fault = StackCount(7, 7, "app", ("main", "touch"), 1000)
    text = render(
        snapshot(outstanding=(kernel,), outstanding_bytes=64, page_faults=(fault,), min_age_ms=5)
    )
    assert "64 bytes in 1 allocations from kernel" in text
    assert "older than 5 ms" in text
    assert "1,000 page faults in app (7)\n    touch\n    main\n" in text
    assert "outstanding: 0 bytes" in render(snapshot(outstanding=(), outstanding_bytes=0))


def test_long_stacks_are_cut() -> None:
    frames = tuple(f"f{i}" for i in range(30))
    shown = mem_table.leaf_first(frames, limit=3)
    assert shown == ["f29", "f28", "f27", "... 27 more frames"]
    assert mem_table.human_bytes(5 * 1024 * 1024) == "5.0 MiB"
    assert mem_table.human_bytes(12) == "12 B"


def test_snapshot_round_trips_through_json() -> None:
    snap = snapshot()
    again = snapshot_from_dict(snap.to_dict())
    assert again == snap
    profiles = snap.stack_profiles()
    assert profiles[0].unit == "bytes" and profiles[0].total == 69732


def block(
    addr: int, tgid: int, size: int, ts: int, stack_id: int, weight: tuple[int, int] | None = None
) -> tuple[AllocKey, AllocInfo]:
    """A live block; `weight` (bytes, blocks) it stands for under byte sampling."""
    w_bytes, w_count = weight or (size, 1)
    info = AllocInfo(
        size=size, ts=ts, stack_id=stack_id, weight_bytes=w_bytes, weight_count=w_count
    )
    return AllocKey(addr=addr, tgid=tgid), info


def test_aggregate_blocks_sums_by_stack_and_applies_min_age() -> None:
    blocks = [
        block(0x10, 1, 100, ts=1_000, stack_id=5),
        block(0x20, 1, 50, ts=2_000, stack_id=5),
        block(0x30, 1, 7, ts=9_500, stack_id=6),
        block(0x40, 2, 9, ts=1_000, stack_id=-17),
    ]
    out = aggregate_blocks(blocks, now_ns=10_000, min_age_ns=1_000)
    assert out.by_stack == {(1, 5): [150, 2], (2, -1): [9, 1]}


def test_aggregate_blocks_sums_the_weights_of_sampled_blocks() -> None:
    blocks = [
        block(0x10, 1, 100, ts=1_000, stack_id=5, weight=(65536, 655)),
        block(0x20, 1, 50, ts=2_000, stack_id=5, weight=(65536, 1311)),
    ]
    out = aggregate_blocks(blocks, now_ns=10_000, min_age_ns=1_000)
    assert out.by_stack == {(1, 5): [131072, 1966]}


def test_the_gap_table_draws_gaps_of_the_stated_mean() -> None:
    import struct

    value = mem.sampling_value(4096)
    drawn, scale, *q16 = struct.unpack(f"<QQ{mem.GAP_SLOTS}I", value)
    gaps = [(q * scale >> 16) + 1 for q in q16]
    assert drawn == sum(gaps) // len(gaps) and abs(drawn - 4096) <= 2
    assert max(gaps) > 6 * 4096  # the exponential's tail: 1 - exp(-s/R) of a large block
    assert mem.sampling_value(0)[:16] == bytes(16)  # 0: every block


def test_stack_parsing_and_return_address_adjustment() -> None:
    addrs = (0x401000, 0x402000, 0x999)
    raw = bytes(StoredStack(nr=2, ips=(ctypes.c_uint64 * STORED_STACK_DEPTH)(*addrs)))
    assert addresses_of(raw) == (0x401000, 0x402000)  # only the first `nr` are the stack
    assert return_addresses_to_calls([0x401000, 0]) == [0x400FFF, 0]


def test_lookup_order_puts_executable_first_and_libc_last() -> None:
    libs = ["/lib/libc.so.6", "/lib/libjemalloc.so.2", "/bin/app", "/lib/libm.so.6"]
    order = mem_allocator.lookup_order("/bin/app", libs)
    assert order == ["/bin/app", "/lib/libjemalloc.so.2", "/lib/libm.so.6", "/lib/libc.so.6"]
    assert mem_allocator.is_libc("/usr/lib/libc-2.31.so")
    assert not mem_allocator.is_libc("/usr/lib/libcrypt.so.1")


@pytest.fixture(scope="module")
def own_malloc(tmp_path_factory: pytest.TempPathFactory, cc: str) -> Path:
    src = r"""
    #include <stddef.h>
    static char arena[1 << 16];
    static size_t used;
    void *malloc(size_t n) { void *p = arena + used; used += (n + 15) & ~15UL; return p; }
    void free(void *p) { (void)p; }
    int main(void) { return malloc(3) == 0; }
    """
    return build_c(cc, src, tmp_path_factory.mktemp("alloc") / "own_malloc", "-O1")


def test_executable_with_its_own_malloc_is_its_own_allocator(own_malloc: Path) -> None:
    assert mem_allocator.defines_symbol(str(own_malloc))
    assert mem_allocator.allocator_of_command(str(own_malloc)) == str(own_malloc)
    offsets = mem_allocator.function_offsets(str(own_malloc), ["malloc", "free", "calloc"])
    assert set(offsets) == {"malloc", "free"}


def test_plain_program_resolves_to_system_libc(cc: str) -> None:
    libc = mem_allocator.allocator_of_command(cc)
    assert mem_allocator.is_libc(libc) and os.path.exists(libc)
    assert mem_allocator.allocator_of_process(os.getpid()).endswith(libc)
    assert not mem_allocator.defines_symbol("/nonexistent")


def test_cheap_probe_offset_skips_a_leading_test_of_the_first_argument(tmp_path: Path) -> None:
    code = tmp_path / "code.bin"
    code.write_bytes(b"\x90" * 16 + bytes.fromhex("4885ff0f84") + b"\x55\x41\x54" + b"\x90" * 8)
    assert mem_allocator.cheap_probe_offset(str(code), 16, "x86_64") == 19
    assert mem_allocator.cheap_probe_offset(str(code), 21, "x86_64") == 21
    assert mem_allocator.cheap_probe_offset(str(code), 16, "aarch64") == 16
    assert mem_allocator.cheap_probe_offset(str(tmp_path / "gone"), 16, "x86_64") == 16


def test_multi_uprobe_support_by_kernel_release() -> None:
    assert not uprobe_multi.kernel_supports("6.1.0-18-amd64")
    assert not uprobe_multi.kernel_supports("garbage")
    assert uprobe_multi.kernel_supports("6.6.0") == uprobe_multi.libbpf.has(
        "bpf_program__set_expected_attach_type"
    )
    # uprobe sessions (an entry program that can skip its return): 6.13 and later
    assert not uprobe_multi.sessions_supported("6.12.9")
    assert uprobe_multi.sessions_supported("6.13.0") == uprobe_multi.kernel_supports("6.13.0")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mem", "--min-age", "-1"], "--min-age must be >= 0"),
        (["mem", "--top", "-2"], "--top must be 0 (every row)"),
        (["mem", "-d", "0"], "--duration must be a positive"),
        (["mem", "-p", "1", "--", "true"], "either --pid or -- CMD"),
        (["mem", "--table-size", "2000000000"], "--table-size must be from 1024 to 16777216"),
        (["mem", "--table-size", "100"], "--table-size must be from 1024 to 16777216"),
        # kthreadd: a kernel thread has no user-space allocations; refused before tracing.
        (["mem", "-p", "2", "-d", "1"], "process 2 (kthreadd) is a kernel thread"),
    ],
)
def test_cli_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(args) == 2
    assert message in capsys.readouterr().err


def test_a_pid_given_many_times_is_one_target() -> None:
    from otlp_ebpf.cli.common import target_spec

    assert target_spec([1] * 3000, 0, None).pids == (1,)
    assert target_spec([1, os.getpid(), 1], 0, None).pids == (1, os.getpid())
