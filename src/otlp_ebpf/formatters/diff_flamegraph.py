"""Differential flamegraphs: one side's widths, coloured by how each frame's share changed.

By default widths come from NEW and a frame that grew is red, one that shrank blue. The
reverse view takes widths from BASE, so code that vanished in NEW is still drawn (blue); the
colours keep their meaning (red always means "grew in NEW").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import BinaryIO

from otlp_ebpf.analysis.diff import RunSet, pooled_stacks, summed_stacks
from otlp_ebpf.formatters.flametree import ROOT_NAME, FlameNode, frame_kind

Stacks = Mapping[tuple[str, ...], float]


def inclusive_shares(shares: Stacks) -> dict[tuple[str, ...], float]:
    """Share of every path prefix (a node of the tree), from per-stack shares."""
    result: dict[tuple[str, ...], float] = {(): sum(shares.values())}
    for path, share in shares.items():
        for depth in range(1, len(path) + 1):
            prefix = path[:depth]
            result[prefix] = result.get(prefix, 0.0) + share
    return result


def differential_tree(widths: Stacks, before: Stacks, after: Stacks) -> FlameNode:
    """A tree drawn from `widths` (weights, paths comm first), each node's `delta` the change
    of its inclusive share in points, from `before` and `after` (shares of 0..1 per stack)."""
    root = FlameNode(ROOT_NAME)
    for path, weight in widths.items():
        value = round(weight)
        if value <= 0:
            continue
        root.value += value
        node = root
        for depth, frame in enumerate(path):
            node = node.child(frame, "comm" if depth == 0 else frame_kind(frame))
            node.value += value
        node.self_value += value
    share_before, share_after = inclusive_shares(before), inclusive_shares(after)
    _set_deltas(root, (), share_before, share_after)
    return root


def _set_deltas(
    root: FlameNode,
    root_path: tuple[str, ...],
    before: Mapping[tuple[str, ...], float],
    after: Mapping[tuple[str, ...], float],
) -> None:
    pending = [(root, root_path)]
    while pending:
        node, path = pending.pop()
        node.delta = 100.0 * (after.get(path, 0.0) - before.get(path, 0.0))
        pending.extend((child, (*path, name)) for name, child in node.children.items())


def render_html(trees: list[tuple[str, FlameNode, str]], stream: BinaryIO, *, title: str) -> None:
    """One interactive page holding every profile's differential tree."""
    from otlp_ebpf.formatters.flamegraph_html import render_trees

    render_trees(trees, stream, title=title, differential=True)


def render_svg(tree: FlameNode, stream: BinaryIO, *, title: str, unit: str) -> None:
    """One static differential flamegraph."""
    from otlp_ebpf.formatters.flamegraph_svg import render_tree_svg

    render_tree_svg(tree, stream, title=title, unit=unit, differential=True)


def differential_trees(
    base: RunSet, new: RunSet, profiles: list[tuple[str, str]], *, reverse: bool = False
) -> list[tuple[str, FlameNode, str]]:
    """(label, tree, unit) for each (profile name, unit): NEW widths, or BASE's if `reverse`."""
    trees = []
    for name, unit in profiles:
        widths = summed_stacks(base if reverse else new, name)
        tree = differential_tree(widths, pooled_stacks(base, name), pooled_stacks(new, name))
        trees.append((name, tree, unit))
    return trees
