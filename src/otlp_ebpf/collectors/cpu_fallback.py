"""On-CPU sampling that starts with DWARF unwinding and may fall back to frame pointers.

Under `--budget` with `--unwind auto`, DWARF sampling (a copy of the stack per sample, unwound
here) is the expensive way; when the budget cannot be held at its floor rate the budget's
controller (collectors/budget.py, UnwindFallback) calls `fall_back`: the frame-pointer object,
loaded paused at the start beside the DWARF one (so it follows the same processes from the
start), begins sampling and the DWARF sampling events are closed. The profile keeps both
parts' stacks; a note says when and why it fell back and what frame pointers saw after.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from otlp_ebpf.collectors import base
from otlp_ebpf.collectors.cpu_sampling import RawStack, SampledStacks, Sampler, merge_stacks
from otlp_ebpf.model import KERNEL_SUFFIX, ProcessInfo, StackCount


class DwarfPart(Sampler, Protocol):
    def stop_sampling(self) -> None: ...


class FramePointerPart(Sampler, Protocol):
    def start_sampling(self, hz: int) -> None: ...


class FallbackSampler:
    """DWARF on-CPU sampling until `fall_back(hz)`, frame-pointer sampling after it."""

    def __init__(self, dwarf: DwarfPart, fp: FramePointerPart) -> None:
        self.dwarf = dwarf
        self.fp = fp
        self.fell_back = False
        self._started = 0.0
        self.fell_back_at_s = 0.0  # seconds into the run
        self.why = ""

    @property
    def active(self) -> Sampler:
        return self.fp if self.fell_back else self.dwarf

    def start(self, targets: base.Targets) -> None:
        self.dwarf.start(targets)
        self.fp.start(targets)
        self._started = time.monotonic()

    def fall_back(self, hz: int, why: str) -> None:
        """Frame pointers from now on, at `hz` (`why`: the budget's reason). Frame-pointer
        sampling starts before the DWARF one stops: no stretch of the run goes unsampled."""
        if self.fell_back:
            return
        self.fp.start_sampling(hz)
        self.dwarf.stop_sampling()
        self.fell_back = True
        self.why = why
        self.fell_back_at_s = time.monotonic() - self._started

    def poll(self, timeout_s: float) -> None:
        # The DWARF part's samples are unwound as they come: it waits while it samples, and
        # after the fall back it still reads what was queued.
        self.active.poll(timeout_s)
        (self.dwarf if self.fell_back else self.fp).poll(0.0)

    def stop(self) -> None:
        self.dwarf.stop()
        self.fp.stop()

    def finish(self) -> SampledStacks:
        self.stop()
        dwarf, fp = self.dwarf.finish(), self.fp.finish()
        own = dwarf.own_pids | fp.own_pids
        after = [s for s in fp.on_cpu if s.pid not in own]
        lost = dict(dwarf.lost)
        for reason, n in fp.lost.items():
            lost[reason] = lost.get(reason, 0) + n
        return SampledStacks(
            on_cpu=merge_stacks(dwarf.on_cpu + after),
            off_cpu=[],
            lost=lost,
            notes=dwarf.notes + fp.notes + self._note(after),
            own_pids=own,
        )

    def _note(self, after: list[StackCount]) -> tuple[str, ...]:
        if not self.fell_back:
            return ()
        return (
            f"budget: fell back from DWARF to frame pointers at {self.fell_back_at_s:.1f} s: "
            f"{self.why}; {self.fp_samples(after)}",
        )

    def fp_samples(self, stacks: list[StackCount]) -> str:
        """`41 samples since, unwound with frame pointers (hottest: spin)`."""
        total = sum(s.count for s in stacks)
        hottest = Counter[str]()
        for s in stacks:
            leaf = next((f for f in reversed(s.frames) if not f.endswith(KERNEL_SUFFIX)), "")
            if leaf:
                hottest[leaf] += s.count
        top = f" (hottest: {hottest.most_common(1)[0][0]})" if hottest else ""
        return f"{total:,} samples since, unwound with frame pointers{top}"

    def cost(self) -> tuple[int, int]:
        costs = [self.dwarf.cost(), self.fp.cost()]
        return sum(c[0] for c in costs), sum(c[1] for c in costs)

    def helper_cpu_s(self) -> float:
        return self.dwarf.helper_cpu_s() + self.fp.helper_cpu_s()

    def processes(self) -> dict[int, ProcessInfo]:
        return {**self.fp.processes(), **self.dwarf.processes()}

    def raw_counts(self) -> dict[RawStack, int]:
        # Keys do not collide: a frame-pointer key is (pid, key bytes), a DWARF key longer.
        return {**self.dwarf.raw_counts(), **self.fp.raw_counts()}

    def raw_frames(self, keys: Iterable[RawStack]) -> dict[RawStack, tuple[str, ...]]:
        fp_keys: list[RawStack] = []
        dwarf_keys: list[RawStack] = []
        for key in keys:
            (fp_keys if is_fp_key(key) else dwarf_keys).append(key)
        return {**self.dwarf.raw_frames(dwarf_keys), **self.fp.raw_frames(fp_keys)}

    def raw_blocked(self) -> dict[RawStack, int]:
        return {}  # on-CPU only: off-CPU blocks come from a sampler beside it

    def raw_blocked_frames(self, keys: Iterable[RawStack]) -> dict[RawStack, tuple[str, ...]]:
        return {}

    def set_frequency(self, hz: int) -> None:
        self.active.set_frequency(hz)


def is_fp_key(key: RawStack) -> bool:
    """A frame-pointer sampler's raw key: (pid, the kernel's key bytes)."""
    return len(key) == 2 and isinstance(key[1], bytes)


def fallback_part(sampler: object) -> FallbackSampler | None:
    """The sampler's DWARF-to-frame-pointer part, if it has one (alone or beside off-CPU)."""
    if isinstance(sampler, FallbackSampler):
        return sampler
    parts = getattr(sampler, "parts", ())
    return next((p for p in parts if isinstance(p, FallbackSampler)), None)
