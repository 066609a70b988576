from __future__ import annotations

import io
import xml.etree.ElementTree as ET

from otlp_ebpf.formatters import flamegraph_svg
from otlp_ebpf.formatters.flamegraph_svg import render_tree_svg
from otlp_ebpf.formatters.flametree import FlameNode, build_tree
from otlp_ebpf.model import StackCount, StackProfile
from tests.formatters.formatter_fixtures import AWKWARD_FRAMES, cpu_snapshot

SVG = "{http://www.w3.org/2000/svg}"


def frames(data: bytes) -> dict[str, ET.Element]:
    """Frame groups by name (the text before the weight in their <title>)."""
    root = ET.fromstring(data)
    assert root.tag == f"{SVG}svg"
    found = {}
    for group in root.iter(f"{SVG}g"):
        title = group.findtext(f"{SVG}title") or ""
        found[title.rsplit(" (", 1)[0]] = group
    return found


def test_every_frame_is_drawn_with_a_tooltip_and_escaped_names() -> None:
    stream = io.BytesIO()
    flamegraph_svg.render(cpu_snapshot(), stream)

    drawn = frames(stream.getvalue())

    assert len(drawn) == 16
    assert set(AWKWARD_FRAMES) <= set(drawn)
    title = drawn["compute"].findtext(f"{SVG}title")
    assert title == "compute (75 samples, 75.00%)"


def test_root_sits_at_the_bottom_and_callees_above() -> None:
    stream = io.BytesIO()
    flamegraph_svg.render(cpu_snapshot(), stream)
    drawn = frames(stream.getvalue())

    def y(name: str) -> float:
        rect = drawn[name].find(f"{SVG}rect")
        assert rect is not None
        return float(rect.get("y", "0"))

    assert y("all") > y("app") > y("_start") > y("main") > y("compute")


def test_widths_are_proportional_to_weight() -> None:
    stream = io.BytesIO()
    flamegraph_svg.render(cpu_snapshot(), stream)
    drawn = frames(stream.getvalue())

    def width(name: str) -> float:
        rect = drawn[name].find(f"{SVG}rect")
        assert rect is not None
        return float(rect.get("width", "0"))

    assert abs(width("compute") / width("all") - 0.75) < 0.001
    assert abs(width("write") / width("all") - 0.20) < 0.001


def test_off_cpu_goes_to_a_sibling_in_nanoseconds() -> None:
    parts = flamegraph_svg.render_parts(cpu_snapshot())
    assert [name for name, _ in parts] == ["", "off_cpu"]
    stream = io.BytesIO()
    parts[1][1](stream)
    title = frames(stream.getvalue())["poll"].findtext(f"{SVG}title")
    assert title == "poll (1,000,000 ns, 25.00%)"


def test_frames_narrower_than_a_tenth_of_a_pixel_are_left_out() -> None:
    stacks = (StackCount(1, 1, "a", ("wide",), 1_000_000), StackCount(1, 1, "a", ("thin",), 1))
    stream = io.BytesIO()
    tree = build_tree(StackProfile("cpu", "samples", "count", stacks))
    render_tree_svg(tree, stream, title="t", unit="count")
    assert set(frames(stream.getvalue())) == {"all", "a", "wide"}


def test_differential_colours_and_tooltips_show_the_change() -> None:
    tree = FlameNode("all", 100, delta=0.0)
    tree.children["grew"] = FlameNode("grew", 60, 60, delta=20.0, kind="native")
    tree.children["shrank"] = FlameNode("shrank", 40, 40, delta=-10.0, kind="native")
    stream = io.BytesIO()

    render_tree_svg(tree, stream, title="<diff>", unit="count", differential=True)

    drawn = frames(stream.getvalue())
    fills = {name: g.find(f"{SVG}rect").get("fill") for name, g in drawn.items()}  # type: ignore[union-attr]
    assert fills == {
        "all": "rgb(238,238,238)",
        "grew": "rgb(255,40,40)",
        "shrank": "rgb(135,135,255)",
    }
    assert drawn["shrank"].findtext(f"{SVG}title") == (
        "shrank (40 samples, 40.00%) change of share -10.00 pp"
    )
    assert "&lt;diff&gt;" in stream.getvalue().decode()


def test_empty_tree_is_still_a_valid_image() -> None:
    stream = io.BytesIO()
    render_tree_svg(FlameNode("all"), stream, title="empty", unit="count")
    assert set(frames(stream.getvalue())) == {"all"}


def test_control_characters_in_names_keep_the_image_readable() -> None:
    hostile = "evil\x1b]0;OWNED\x07\x01"
    stacks = (StackCount(1, 1, hostile, (hostile, "main"), 3),)
    tree = build_tree(StackProfile("cpu", "samples", "count", stacks))
    stream = io.BytesIO()

    render_tree_svg(tree, stream, title=hostile, unit="samples")

    drawn = frames(stream.getvalue())  # parses: XML 1.0 forbids those characters raw
    assert "evil\\x1b]0;OWNED\\x07\\x01" in drawn
