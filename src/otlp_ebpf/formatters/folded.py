"""Brendan Gregg's folded stacks: `comm;root;...;leaf WEIGHT`, one line per distinct stack.

Read by flamegraph.pl, inferno and speedscope. The weight is in the profile's unit: samples
for on-CPU, nanoseconds for off-CPU, bytes or objects for memory. One profile per file.
"""

from __future__ import annotations

from collections import Counter
from typing import BinaryIO

from otlp_ebpf.formatters.flametree import comm_label
from otlp_ebpf.formatters.registry import Part, one_file_per_profile
from otlp_ebpf.model import Snapshot, StackProfile

# `;` separates frames and a line break ends the record, so neither may appear inside a frame.
# Every character Python's splitlines() breaks on counts, for readers that split that way.
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_UNSAFE = str.maketrans({";": ":", **dict.fromkeys(_LINE_BREAKS, " ")})


def folded_frame(name: str) -> str:
    """A frame name made safe for one field of a folded line."""
    return name.translate(_UNSAFE)


def folded_counts(profile: StackProfile) -> Counter[str]:
    """Weight per folded stack, duplicates merged, zero weights left out."""
    counts: Counter[str] = Counter()
    for stack in profile.stacks:
        weight = profile.weight(stack)
        if weight > 0:
            path = (comm_label(stack), *stack.frames)
            counts[";".join(folded_frame(f) for f in path)] += weight
    return counts


def folded_lines(profile: StackProfile) -> list[str]:
    """The folded lines of a profile, sorted so equal profiles give equal files."""
    return sorted(f"{stack} {weight}" for stack, weight in folded_counts(profile).items())


def render_profile(profile: StackProfile, stream: BinaryIO) -> None:
    """Write one profile as folded lines (UTF-8)."""
    text = "".join(f"{line}\n" for line in folded_lines(profile))
    stream.write(text.encode("utf-8"))


def render(snapshot: Snapshot, stream: BinaryIO) -> None:
    """Write the snapshot's first stack profile; `render_parts` gives the others."""
    profiles = snapshot.stack_profiles()
    if profiles:
        render_profile(profiles[0], stream)


def render_parts(snapshot: Snapshot) -> list[Part]:
    return one_file_per_profile(snapshot, render_profile)
