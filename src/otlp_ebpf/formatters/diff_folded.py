"""Differential folded stacks, as difffolded.pl writes them: `stack count_before count_after`.

flamegraph.pl draws such a file as a differential flamegraph (widths from the second column
of counts, colour from the change). BASE counts are scaled to NEW's total first (what
`difffolded.pl -n` does), so colours show changes of share, not of run length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TextIO

from otlp_ebpf.formatters.folded import folded_frame


def diff_folded_lines(
    before: Mapping[tuple[str, ...], float], after: Mapping[tuple[str, ...], float]
) -> list[str]:
    """One line per stack seen on either side, sorted; BASE normalised to NEW's total."""
    total_before, total_after = sum(before.values()), sum(after.values())
    scale = total_after / total_before if total_before else 1.0
    lines = []
    for path in sorted(set(before) | set(after)):
        old = round(before.get(path, 0.0) * scale)
        new = round(after.get(path, 0.0))
        if old or new:
            stack = ";".join(folded_frame(f) for f in path)
            lines.append(f"{stack} {old} {new}")
    return lines


def render_diff_folded(
    before: Mapping[tuple[str, ...], float],
    after: Mapping[tuple[str, ...], float],
    stream: TextIO,
) -> None:
    """Write the differential folded file for one profile."""
    for line in diff_folded_lines(before, after):
        stream.write(line + "\n")
