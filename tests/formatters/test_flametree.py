from __future__ import annotations

from otlp_ebpf.formatters.flametree import FlameNode, build_tree
from otlp_ebpf.model import StackCount, StackProfile
from tests.formatters.formatter_fixtures import cpu_snapshot


def _path(tree: FlameNode, *names: str) -> FlameNode:
    node = tree
    for name in names:
        node = node.children[name]
    return node


def test_tree_levels_are_root_then_comm_then_frames_root_first() -> None:
    tree = build_tree(cpu_snapshot().stack_profiles()[0])

    assert tree.name == "all"
    assert tree.value == 100
    assert list(tree.children) == ["app", "db"]
    main = _path(tree, "app", "_start", "main")
    assert list(main.children) == ["compute", "write"]  # insertion order, not sorted
    assert main.value == 95
    assert main.self_value == 0


def test_value_includes_children_and_self_counts_stacks_ending_here() -> None:
    tree = build_tree(cpu_snapshot().stack_profiles()[0])

    compute = _path(tree, "app", "_start", "main", "compute")
    assert (compute.value, compute.self_value) == (75, 60)
    assert _path(tree, "app", "_start", "main", "compute", "inner").self_value == 15


def test_kinds_mark_processes_kernel_and_user_frames() -> None:
    tree = build_tree(cpu_snapshot().stack_profiles()[0])

    assert tree.kind is None
    assert tree.children["app"].kind == "comm"
    assert _path(tree, "app", "_start", "main", "write").kind == "native"
    assert _path(tree, "app", "_start", "main", "write", "vfs_write_[k]").kind == "kernel"


def test_off_cpu_tree_is_weighted_by_blocked_nanoseconds() -> None:
    tree = build_tree(cpu_snapshot().stack_profiles()[1])

    assert tree.value == 4_000_000
    assert _path(tree, "db", "run", "poll").value == 1_000_000


def test_unknown_comm_falls_back_to_pid_and_zero_weights_are_dropped() -> None:
    stacks = (StackCount(7, 7, "", ("f",), 3), StackCount(8, 8, "x", ("g",), 0))
    tree = build_tree(StackProfile("cpu", "samples", "count", stacks))

    assert list(tree.children) == ["[pid 7]"]
    assert tree.value == 3


def test_walk_yields_parents_before_children_with_depths() -> None:
    tree = build_tree(cpu_snapshot(off_cpu=False).stack_profiles()[0])

    walked = [(depth, node.name) for depth, node in tree.walk()]

    assert walked[:5] == [(0, "all"), (1, "app"), (2, "_start"), (3, "main"), (4, "compute")]
    assert len(walked) == 16
    assert max(depth for depth, _ in walked) == 8
