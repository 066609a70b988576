"""The cpu top-functions table and the `report` command on saved snapshots."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from otlp_ebpf.cli.app import run
from otlp_ebpf.formatters import cpu_table
from otlp_ebpf.model import (
    CpuSnapshot,
    MemSnapshot,
    StackCount,
    SyscallsSnapshot,
    SyscallStat,
    write_snapshot,
)

COMMON = {"started_at": "2025-01-01T00:00:00+00:00", "duration_s": 2.0, "host": "h"}


def cpu_snapshot() -> CpuSnapshot:
    return CpuSnapshot(
        **COMMON,
        frequency_hz=99,
        samples_total=100,
        stacks=(
            StackCount(1, 1, "app", ("main", "a", "work"), 60),
            StackCount(1, 1, "app", ("main", "b", "work"), 30),
            StackCount(1, 2, "app", ("main", "b"), 10),
        ),
        off_cpu=(StackCount(1, 1, "app", ("main", "wait", "[x]_[k]"), 3, 3_000_000),),
        off_cpu_min_block_us=5,
    )


def rendered(snapshot: CpuSnapshot, top: int | None = None) -> str:
    stream = io.StringIO()
    cpu_table.render_table(snapshot, Console(file=stream, width=120), top=top)
    return stream.getvalue()


def test_self_and_total_shares_per_function() -> None:
    profile = cpu_snapshot().stack_profiles()[0]
    shares = {s.name: s for s in cpu_table.function_shares(profile)}
    assert (shares["work"].self_weight, shares["work"].total_weight) == (90, 90)
    assert (shares["b"].self_weight, shares["b"].total_weight) == (10, 40)
    assert (shares["main"].self_weight, shares["main"].total_weight) == (0, 100)
    assert [s.name for s in cpu_table.function_shares(profile)][:2] == ["work", "b"]


def test_recursion_counts_once_in_total() -> None:
    snap = CpuSnapshot(**COMMON, stacks=(StackCount(1, 1, "x", ("f", "f", "f"), 4),))
    (share,) = cpu_table.function_shares(snap.stack_profiles()[0])
    assert (share.self_weight, share.total_weight) == (4, 4)


def test_table_shows_percentages_blocked_time_and_summary() -> None:
    text = rendered(cpu_snapshot())
    assert "90.0%" in text and "100.0%" in text
    assert "off-CPU" in text and "3.0 ms" in text
    assert "100 samples at 99 Hz over 2.0 s in 1 processes" in text
    assert "(>= 5 us)" in text


def test_top_limits_rows_and_markup_is_escaped() -> None:
    text = rendered(cpu_snapshot(), top=1)
    assert "work" in text and " b " not in text
    assert "[x]_[k]" in rendered(cpu_snapshot())


def test_other_kinds_are_refused() -> None:
    with pytest.raises(TypeError):
        cpu_table.render_table(MemSnapshot(**COMMON), Console(file=io.StringIO()))


def save(snapshot: CpuSnapshot | SyscallsSnapshot | MemSnapshot, path: Path) -> str:
    with path.open("w") as fh:
        write_snapshot(snapshot, fh)
    return str(path)


def test_report_renders_a_cpu_snapshot_and_writes_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save(cpu_snapshot(), tmp_path / "cpu.json")
    folded = tmp_path / "again.folded"
    assert run(["report", path, "-o", str(folded)]) == 0
    captured = capsys.readouterr()
    assert "on-CPU: top functions" in captured.out
    assert "103 samples" in captured.err
    assert "app;main;a;work 60" in folded.read_text()


def test_report_json_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save(cpu_snapshot(), tmp_path / "cpu.json")
    assert run(["report", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == cpu_snapshot().to_dict()


def test_report_renders_syscalls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stat = SyscallStat(7, "app", "read", 12, 1, {"EAGAIN": 1}, 1200, 100, 200, 300)
    path = save(SyscallsSnapshot(**COMMON, syscalls=(stat,)), tmp_path / "sys.json")
    assert run(["report", path]) == 0
    captured = capsys.readouterr()
    assert "read" in captured.out and "12 syscalls" in captured.err


def test_report_refuses_stack_formats_for_table_kinds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save(SyscallsSnapshot(**COMMON), tmp_path / "sys.json")
    assert run(["report", path, "-o", str(tmp_path / "x.folded")]) == 2
    assert "needs stacks" in capsys.readouterr().err


def test_report_bad_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["report", str(tmp_path / "none.json")]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "gpu", "version": 1}')
    assert run(["report", str(bad)]) == 2
    assert "unknown kind" in capsys.readouterr().err


def test_report_mem_snapshot_uses_its_table_or_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save(MemSnapshot(**COMMON, allocations_total=5), tmp_path / "mem.json")
    assert run(["report", path]) == 0
    assert "5 allocations" in capsys.readouterr().err
