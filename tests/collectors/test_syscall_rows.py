"""The stats table's per-CPU values summed into one row each, as the kernel's struct
syscall_stats lays them out, against the same values added one CPU at a time."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from otlp_ebpf.collectors.syscalls import _STATS, SYSCALL_SLOTS, _Row, rows_of

WORDS = 5 + SYSCALL_SLOTS


@dataclass
class Table:
    """What `rows_of` reads of a BpfMap: its CPUs and the bytes each one's value takes."""

    ncpus: int
    slot: int = _STATS.size


def per_cpu_value(cpus: list[list[int]]) -> bytes:
    return b"".join(_STATS.pack(*values) for values in cpus)


def one_cpu_at_a_time(cpus: list[list[int]]) -> _Row:
    row = _Row()
    for values in cpus:
        row.add_values(tuple(values))
    return row


u64 = st.integers(min_value=0, max_value=2**40)
cpu_values = st.lists(u64, min_size=WORDS, max_size=WORDS)


@given(
    st.integers(min_value=1, max_value=4).flatmap(
        lambda n: st.lists(st.lists(cpu_values, min_size=n, max_size=n), min_size=0, max_size=6)
    )
)
def test_rows_of_sums_every_cpu_like_adding_them_one_at_a_time(entries):
    table = Table(ncpus=len(entries[0]) if entries else 1)
    rows = rows_of([per_cpu_value(cpus) for cpus in entries], table)  # type: ignore[arg-type]
    assert rows == [one_cpu_at_a_time(cpus) for cpus in entries]


def test_a_cpu_that_saw_no_call_gives_no_minimum():
    # CPU 0 ran no call of the row (min 0), CPU 1 ran three: the row's min is CPU 1's
    idle = [0] * WORDS
    busy = [3, 1, 900, 200, 400] + [0] * SYSCALL_SLOTS
    busy[5 + 8] = 3
    (row,) = rows_of([per_cpu_value([idle, busy])], Table(ncpus=2))  # type: ignore[arg-type]
    assert (row.count, row.errors, row.total_ns, row.min_ns, row.max_ns) == (3, 1, 900, 200, 400)
    assert row.hist is not None and row.hist[8] == 3 and sum(row.hist) == 3
    assert struct.calcsize(f"<{WORDS}Q") == _STATS.size
