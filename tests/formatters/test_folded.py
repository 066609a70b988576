from __future__ import annotations

import io
from collections import Counter

from hypothesis import given, settings

from otlp_ebpf.formatters import folded
from otlp_ebpf.formatters.flametree import comm_label
from otlp_ebpf.model import CpuSnapshot, StackCount, StackProfile
from tests.formatters.formatter_fixtures import cpu_snapshot, mem_snapshot, stack_profiles_strategy


def parse_folded(text: str) -> Counter[tuple[str, ...]]:
    """Read folded lines the way flamegraph.pl does: the count follows the last space."""
    parsed: Counter[tuple[str, ...]] = Counter()
    for line in text.split("\n")[:-1]:
        stack, count = line.rsplit(" ", 1)
        parsed[tuple(stack.split(";"))] += int(count)
    return parsed


def _text(profile: StackProfile) -> str:
    stream = io.BytesIO()
    folded.render_profile(profile, stream)
    return stream.getvalue().decode("utf-8")


def test_cpu_lines_are_comm_then_frames_with_sample_counts() -> None:
    stream = io.BytesIO()
    folded.render(cpu_snapshot(), stream)

    assert stream.getvalue().decode().splitlines() == [
        "app;_start;main;compute 60",
        "app;_start;main;compute;inner 15",
        "app;_start;main;write;vfs_write_[k] 20",
        "db;run;[unknown];<lambda>;operator<;a:b;naïve_λ;</script> 5",
    ]


def test_duplicates_merge_across_threads() -> None:
    stacks = (StackCount(1, 1, "a", ("f",), 2), StackCount(1, 2, "a", ("f",), 3))
    assert _text(StackProfile("cpu", "samples", "count", stacks)) == "a;f 5\n"


def test_off_cpu_weights_are_nanoseconds() -> None:
    off_cpu = cpu_snapshot().stack_profiles()[1]
    assert _text(off_cpu) == "app;_start;main;read;schedule_[k] 3000000\ndb;run;poll 1000000\n"


def test_memory_weights_are_bytes_then_objects_in_a_sibling() -> None:
    parts = folded.render_parts(mem_snapshot())
    assert [name for name, _ in parts] == ["", "outstanding_objects"]
    texts = []
    for _, write in parts:
        stream = io.BytesIO()
        write(stream)
        texts.append(stream.getvalue().decode())
    assert "srv;main;load;malloc 4096\n" in texts[0]
    assert "srv;main;load;malloc 4\n" in texts[1]


def test_empty_profile_writes_an_empty_file() -> None:
    stream = io.BytesIO()
    folded.render(CpuSnapshot(started_at="t", duration_s=1.0, host="h"), stream)
    assert stream.getvalue() == b""


@settings(max_examples=150, deadline=None)
@given(stack_profiles_strategy())
def test_round_trip_keeps_every_weight(profile: StackProfile) -> None:
    text = _text(profile)

    expected: Counter[tuple[str, ...]] = Counter()
    for stack in profile.stacks:
        if stack.count > 0:
            path = (comm_label(stack), *stack.frames)
            expected[tuple(folded.folded_frame(f) for f in path)] += stack.count
    assert parse_folded(text) == expected
    lines = text.splitlines()
    assert len(lines) == len(expected)  # no frame breaks a line, however it is read
    assert lines == sorted(lines)  # stable order
