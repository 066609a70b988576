"""After a burst, the DWARF sampler's caches go back to their size before it.

A burst of new binaries (the agent samples at full rate after a finding) fills the symbol
tables, the unwind tables and the shared frame tuples; their caps are far above what a
steady host needs, so what the burst added stayed. The agent notes their sizes when a burst
starts and trims them back when it ends (collectors/agent.py): here a real sampler follows a
steady binary, then three new ones, and is trimmed back to the marks taken in between.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from otlp_ebpf.collectors import base
from otlp_ebpf.collectors.cpu_dwarf import DwarfSampler
from otlp_ebpf.runtime import heap
from otlp_ebpf.runtime.stats import StatsSession
from otlp_ebpf.targets import TargetSpec
from tests.conftest import SPIN_CPU_C, build_c

pytestmark = pytest.mark.bpf

BURST_BINARIES = 3
SETTLE_S = 10.0  # at most, for the burst's samples waiting for their tables


def spinner(name: str, tag: int, until_exists: str = "") -> str:
    """A program of its own (its own build-id: `tag` makes its loaded bytes differ) that
    spins in `name_work` for ~150 ms, or until the file `until_exists` exists."""
    spin = (
        f'while (access("{until_exists}", F_OK) != 0) SPIN_CPU_MS(20);'
        if until_exists
        else "SPIN_CPU_MS(150);"
    )
    return (
        "#include <unistd.h>\n"
        + SPIN_CPU_C
        + f"volatile int build_tag = {tag};\n"
        + f"__attribute__((noinline)) void {name}_work(void) {{ {spin} }}\n"
        + f"int main(void) {{ {name}_work(); return build_tag == 0; }}\n"
    )


@pytest.fixture(scope="module")
def binaries(cc: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    """The steady binary (spinning until the `go` file exists), the burst's, and `go`."""
    work = tmp_path_factory.mktemp("cache-trim")
    go = work / "go"
    sources = {"steady": spinner("steady", 1, str(go))}
    sources.update({f"burst{i}": spinner(f"burst{i}", 2 + i) for i in range(BURST_BINARIES)})
    built = {
        n: build_c(cc, src, work / n, "-O2", "-fomit-frame-pointer") for n, src in sources.items()
    }
    return built, go


def named(sampler: DwarfSampler, seen: set[str]) -> None:
    """Take the samples so far, named (as the agent does each interval); note the work
    functions they show."""
    stacks, _ = sampler.take_stacks()
    seen.update(f for s in stacks for f in s.frames if f.endswith("_work"))


def poll_until(sampler: DwarfSampler, seen: set[str], done: object) -> None:
    while not done():  # type: ignore[operator]
        sampler.poll(100)
        named(sampler, seen)


def test_trimming_after_a_burst_gives_back_what_its_binaries_added(
    binaries: tuple[dict[str, Path], Path],
) -> None:
    built, go = binaries
    burst = "; ".join(str(built[f"burst{i}"]) for i in range(BURST_BINARIES))
    script = f"{built['steady']}; {burst}"
    targets = base.Targets(TargetSpec(command=("sh", "-c", script)))
    sampler = DwarfSampler(frequency_hz=499, disk_cache=False)
    seen: set[str] = set()
    try:
        with StatsSession():
            sampler.start(targets)
            targets.release()
            poll_until(sampler, seen, lambda: "steady_work" in seen or targets.finished())
            marks = sampler.cache_marks()
            go.touch()
            burst_names = {f"burst{i}_work" for i in range(BURST_BINARIES)}
            poll_until(sampler, seen, targets.finished)
            # Their unwind tables come from the decoding child: their samples wait for them.
            settle = time.monotonic() + SETTLE_S
            while time.monotonic() < settle and not seen & burst_names:
                sampler.poll(100)
                named(sampler, seen)
            grown = sampler.cache_marks()
            dropped = sampler.trim_caches(marks)
            after = sampler.cache_marks()
            heap.release_free_memory()
    finally:
        targets.abandon()
        base.cleanup()
        sampler.close()
    assert "steady_work" in seen
    assert seen & burst_names, seen  # the burst's binaries were sampled and named
    # Their symbol tables (and frame tuples) came on top of the steady ones ...
    assert grown["symbol_bytes"] > marks["symbol_bytes"]
    assert grown["shared_stacks"] > marks["shared_stacks"]
    # ... and went with the trim: every cache is back to its size before the burst.
    assert dropped > 0
    for name, size in marks.items():
        assert after[name] <= size, (name, after[name], size)
