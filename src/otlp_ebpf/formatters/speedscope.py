"""speedscope's file format: shared frames and one `sampled` profile per stack profile.

Opens in https://www.speedscope.app or offline with `speedscope FILE` (npm package
`speedscope`). Samples are frame indices root first, the process name (comm) as the first frame.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO

from otlp_ebpf import __version__
from otlp_ebpf.formatters.flametree import comm_label
from otlp_ebpf.model import Snapshot, StackCount, StackProfile

SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"

_UNITS = {"count": "none", "nanoseconds": "nanoseconds", "bytes": "bytes"}


class _FrameTable:
    """Frames shared by every profile in the file, each (name, file) once."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, str], int] = {}
        self.frames: list[dict[str, str]] = []

    def add(self, name: str, file: str = "") -> int:
        key = (name, file)
        found = self.index.get(key)
        if found is not None:
            return found
        frame = {"name": name, "file": file} if file else {"name": name}
        self.frames.append(frame)
        self.index[key] = len(self.frames) - 1
        return self.index[key]


def _stack_indices(stack: StackCount, table: _FrameTable) -> tuple[int, ...]:
    modules = (
        stack.modules if len(stack.modules) == len(stack.frames) else ("",) * len(stack.frames)
    )
    return (
        table.add(comm_label(stack)),
        *(table.add(f, m) for f, m in zip(stack.frames, modules, strict=True)),
    )


def _sampled_profile(profile: StackProfile, table: _FrameTable) -> dict[str, Any]:
    weights: dict[tuple[int, ...], int] = {}
    for stack in profile.stacks:
        weight = profile.weight(stack)
        if weight > 0:
            key = _stack_indices(stack, table)
            weights[key] = weights.get(key, 0) + weight
    total = sum(weights.values())
    return {
        "type": "sampled",
        "name": profile.name,
        "unit": _UNITS[profile.unit],
        "startValue": 0,
        "endValue": total,
        "samples": [list(k) for k in weights],
        "weights": list(weights.values()),
    }


def speedscope_document(snapshot: Snapshot) -> dict[str, Any]:
    """The speedscope file as a JSON-ready dict."""
    table = _FrameTable()
    profiles = [_sampled_profile(p, table) for p in snapshot.stack_profiles()]
    return {
        "$schema": SCHEMA_URL,
        "name": f"{snapshot.kind} on {snapshot.host} at {snapshot.started_at}",
        "exporter": f"otlp-ebpf {__version__}",
        "activeProfileIndex": 0,
        "shared": {"frames": table.frames},
        "profiles": profiles,
    }


def render(snapshot: Snapshot, stream: BinaryIO) -> None:
    """Write every stack profile of the snapshot into one speedscope file."""
    text = json.dumps(speedscope_document(snapshot), ensure_ascii=False, separators=(",", ":"))
    stream.write(text.encode("utf-8"))
