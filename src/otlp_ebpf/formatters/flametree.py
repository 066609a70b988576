"""A merged call tree of one stack profile: what every flame-style view is drawn from.

The root is "all"; its children are process names (comm), then frames from root to leaf.
`value` is the node's total weight including its children; `self_value` is the weight of
stacks that end exactly at the node.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from otlp_ebpf.model import StackCount, StackProfile, is_kernel_frame

FrameKind = Literal["kernel", "native", "comm"]

ROOT_NAME = "all"


@dataclass(eq=False, slots=True)
class FlameNode:
    """One frame of the merged tree. `delta` is set by differential views: the change of this
    node's share of the total, in percentage points (positive = grew)."""

    name: str
    value: int = 0
    self_value: int = 0
    children: dict[str, FlameNode] = field(default_factory=dict)
    delta: float | None = None
    kind: FrameKind | None = None

    def child(self, name: str, kind: FrameKind) -> FlameNode:
        """The child called `name`, created on first use (children keep insertion order)."""
        node = self.children.get(name)
        if node is None:
            node = FlameNode(name, kind=kind)
            self.children[name] = node
        return node

    def walk(self) -> Iterator[tuple[int, FlameNode]]:
        """Every node with its depth, parents before children, without recursion."""
        pending: list[tuple[int, FlameNode]] = [(0, self)]
        while pending:
            depth, node = pending.pop()
            yield depth, node
            pending.extend((depth + 1, c) for c in reversed(node.children.values()))


def comm_label(stack: StackCount) -> str:
    """The process-level frame of a stack: its comm, or its pid when the name is unknown."""
    return stack.comm or f"[pid {stack.pid}]"


def frame_kind(name: str) -> FrameKind:
    return "kernel" if is_kernel_frame(name) else "native"


def build_tree(profile: StackProfile) -> FlameNode:
    """Merge a profile's stacks into one tree weighted by the profile's unit.

    Stacks of zero weight are left out: they would draw nothing.
    """
    with _collector_paused():
        return _merge(profile)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: a tree of a million nodes, which holds no cycles,
    otherwise triggers collections that cost four times the building itself."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _merge(profile: StackProfile) -> FlameNode:
    root = FlameNode(ROOT_NAME)
    for stack in profile.stacks:
        weight = profile.weight(stack)
        if weight <= 0:
            continue
        root.value += weight
        node = root.child(comm_label(stack), "comm")
        node.value += weight
        for frame in stack.frames:
            # Inlined `child`: this loop runs once per frame of every stack.
            children = node.children
            next_node = children.get(frame)
            if next_node is None:
                next_node = children[frame] = FlameNode(frame, kind=frame_kind(frame))
            next_node.value += weight
            node = next_node
        node.self_value += weight
    return root
