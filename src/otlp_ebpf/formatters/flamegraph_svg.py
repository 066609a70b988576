"""A static SVG flamegraph in the classic layout: root at the bottom, callees stacked above.

Opens in any browser or image viewer; hovering a frame shows its `<title>` (name, weight, share).
One profile per file: further profiles of the snapshot go to sibling files. Frames narrower
than `MIN_WIDTH_PX` are left out, as flamegraph.pl does.
"""

from __future__ import annotations

import functools
import hashlib
from typing import BinaryIO
from xml.sax.saxutils import escape, quoteattr

from otlp_ebpf import hosttext
from otlp_ebpf.formatters.flametree import FlameNode, build_tree
from otlp_ebpf.formatters.registry import Part, one_file_per_profile
from otlp_ebpf.hosttext import escape_controls
from otlp_ebpf.model import Snapshot, StackProfile

WIDTH = 1200
FRAME_HEIGHT = 16
MARGIN = 10
HEADER = 30
MIN_WIDTH_PX = 0.1
CHAR_WIDTH_PX = 6.6  # 11px monospace

_UNIT_WORDS = {"count": "samples", "nanoseconds": "ns", "bytes": "bytes"}


def _stable_hash(name: str) -> int:
    # Python's hash() changes per process; colours must not.
    return int.from_bytes(hashlib.blake2s(name.encode("utf-8"), digest_size=4).digest(), "big")


def frame_colour(node: FlameNode, *, differential: bool, max_delta: float) -> str:
    """Warm hues for user code, orange for the kernel, blue-grey for processes; in
    differential mode red for a share that grew and blue for one that shrank."""
    if differential:
        return _delta_colour(node.delta or 0.0, max_delta)
    h = _stable_hash(node.name)
    if node.kind is None:
        return "rgb(200,200,200)"
    if node.kind == "comm":
        return f"hsl(210,40%,{68 + h % 10}%)"
    if node.kind == "kernel":
        return f"hsl({28 + h % 14},85%,{58 + h % 8}%)"
    return f"hsl({h % 55},80%,{60 + h % 10}%)"


def _delta_colour(delta: float, max_delta: float) -> str:
    if abs(delta) < 0.005 or max_delta <= 0:
        return "rgb(238,238,238)"
    level = round(230 - 190 * min(1.0, abs(delta) / max_delta))
    return f"rgb(255,{level},{level})" if delta > 0 else f"rgb({level},{level},255)"


def _tooltip(node: FlameNode, total: int, unit: str, differential: bool) -> str:
    share = 100.0 * node.value / total if total else 0.0
    text = f"{node.name} ({node.value:,} {_UNIT_WORDS.get(unit, unit)}, {share:.2f}%)"
    if differential and node.delta is not None:
        text += f" change of share {node.delta:+.2f} pp"
    return text


def _label(name: str, width: float) -> str:
    fits = int((width - 4) / CHAR_WIDTH_PX)
    if fits < 3:
        return ""
    return name if len(name) <= fits else name[: fits - 2] + ".."


def _frames(tree: FlameNode, unit: str, differential: bool) -> tuple[list[str], int]:
    """SVG groups for every frame wide enough to draw, and the deepest level drawn."""
    scale = (WIDTH - 2 * MARGIN) / tree.value if tree.value else 0.0
    max_delta = max((abs(n.delta or 0.0) for _, n in tree.walk()), default=0.0)
    rows: list[tuple[int, float, float, FlameNode]] = []
    pending: list[tuple[int, float, FlameNode]] = [(0, 0.0, tree)]
    while pending:
        depth, x, node = pending.pop()
        rows.append((depth, x, node.value * scale, node))
        child_x = x
        for child in node.children.values():
            if child.value * scale >= MIN_WIDTH_PX:
                pending.append((depth + 1, child_x, child))
            child_x += child.value * scale
    top_depth = max((r[0] for r in rows), default=0)
    groups = []
    for depth, x, width, node in rows:
        y = HEADER + (top_depth - depth) * FRAME_HEIGHT
        fill = frame_colour(node, differential=differential, max_delta=max_delta)
        title = _xml_text(_tooltip(node, tree.value, unit, differential))
        groups.append(
            f"<g><title>{title}</title>"
            f'<rect x="{MARGIN + x:.2f}" y="{y}" width="{width:.2f}" '
            f'height="{FRAME_HEIGHT - 1}" fill={quoteattr(fill)} rx="2"/>'
            f'<text x="{MARGIN + x + 3:.2f}" y="{y + FRAME_HEIGHT - 4}">'
            f"{_xml_text(_label(node.name, width))}</text></g>"
        )
    return groups, top_depth


def render_tree_svg(
    tree: FlameNode,
    stream: BinaryIO,
    *,
    title: str,
    unit: str,
    differential: bool = False,
) -> None:
    """Write `tree` as a standalone SVG flamegraph (colours by `delta` when differential)."""
    groups, top_depth = _frames(tree, unit, differential)
    height = HEADER + (top_depth + 1) * FRAME_HEIGHT + MARGIN
    head = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="11">\n'
        f'<rect width="100%" height="100%" fill="#fff"/>\n'
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="15" '
        f'font-family="sans-serif">{_xml_text(title)}</text>\n'
    )
    body = "\n".join(groups)
    stream.write(f"{head}{body}\n</svg>\n".encode())


def _profile_title(snapshot: Snapshot, profile: StackProfile) -> str:
    targets = hosttext.shorten(", ".join(snapshot.targets)) or "all processes"
    return f"{profile.name}: {targets} on {snapshot.host} ({snapshot.duration_s:g} s)"


def render_profile(snapshot: Snapshot, profile: StackProfile, stream: BinaryIO) -> None:
    """Write one profile of `snapshot` as an SVG flamegraph."""
    title = _profile_title(snapshot, profile)
    render_tree_svg(build_tree(profile), stream, title=title, unit=profile.unit)


def render(snapshot: Snapshot, stream: BinaryIO) -> None:
    """Write the snapshot's first stack profile; `render_parts` gives the others."""
    profiles = snapshot.stack_profiles()
    if profiles:
        render_profile(snapshot, profiles[0], stream)


def render_parts(snapshot: Snapshot) -> list[Part]:
    return one_file_per_profile(snapshot, functools.partial(render_profile, snapshot))


def _xml_text(text: str) -> str:
    """Names as XML text: markup escaped, and control characters (which XML 1.0 forbids, so
    one would make the whole file unreadable) shown as `\\xNN`."""
    return escape(escape_controls(text))
