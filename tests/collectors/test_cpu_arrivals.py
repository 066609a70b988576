"""The DWARF cpu sampler meeting new processes of a program it has seen: what every process of
that program has in common (its files, their parsed maps lines, the names of its code) is read
once, and the next process is unwound and named as fully as the first.

A shell runs one binary twice, one process after the other, each spinning a little CPU time in
a function of its own; built without frame pointers, so only DWARF unwinding reaches `main`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from otlp_ebpf.collectors import base
from otlp_ebpf.collectors.cpu_dwarf import DwarfSampler
from otlp_ebpf.symbolize.procmaps import FileId, OpenFiles
from otlp_ebpf.targets import TargetSpec
from tests.conftest import SPIN_CPU_C, build_c, sample_held_targets

pytestmark = pytest.mark.bpf

PROGRAM = (
    SPIN_CPU_C
    + r"""
__attribute__((noinline)) void arrival_hot(void) { SPIN_CPU_MS(150); }
__attribute__((noinline)) void arrival_work(void) { arrival_hot(); spin_sink++; }
int main(void) { arrival_work(); return 0; }
"""
)
_PROC_PATH = re.compile(r"^/proc/(\d+)/")


@pytest.fixture(scope="module")
def arrival_bin(cc: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cpu-arrivals") / "arrival"
    return build_c(cc, PROGRAM, out, "-O2", "-fomit-frame-pointer")


def test_the_second_process_of_a_binary_reuses_its_files_and_names(
    arrival_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: dict[int, list[str]] = defaultdict(list)  # pid -> the paths its maps opened
    keep = OpenFiles.keep

    def spy_keep(
        self: OpenFiles, candidates: list[tuple[str, bool]], inode: int, **kw: Any
    ) -> FileId | None:
        if (found := _PROC_PATH.match(candidates[0][0])) is not None:
            opened[int(found.group(1))].append(candidates[0][0])
        return keep(self, candidates, inode, **kw)

    monkeypatch.setattr(OpenFiles, "keep", spy_keep)
    targets = base.Targets(TargetSpec(command=("sh", "-c", f"{arrival_bin}; {arrival_bin}")))
    sampler = DwarfSampler(frequency_hz=499)
    try:
        sample_held_targets(sampler, targets)
        sampler.drain()
        stacks = sampler.stacks()
    finally:
        targets.abandon()
        base.cleanup()
        sampler.close()
    children = sorted({s.pid for s in stacks if s.comm == "arrival"})
    assert len(children) == 2, "both processes of the binary were sampled"
    for pid in children:
        # Each one unwound from its hot function up to main, through a caller without
        # frame pointers, and named.
        unwound = [s for s in stacks if s.pid == pid and "arrival_hot" in s.frames]
        assert unwound, f"no sample of process {pid} named arrival_hot"
        assert any("arrival_work" in s.frames and "main" in s.frames for s in unwound)
    first, second = children
    # The first process's maps opened its files (the binary at least); the second one's
    # found every file held already, by device and inode, and opened none.
    assert opened[first]
    assert opened[second] == []
    # And frames of the second were named from the lookups made for the first.
    assert sampler.symbolizer.shared_frames > 0
