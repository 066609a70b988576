from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

from otlp_ebpf.formatters import flamegraph_html
from otlp_ebpf.formatters.flamegraph_html import flatten_tree, render_trees
from otlp_ebpf.formatters.flametree import FlameNode, build_tree
from otlp_ebpf.model import StackCount, StackProfile
from tests.formatters.formatter_fixtures import AWKWARD_FRAMES, cpu_snapshot, mem_snapshot

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def run_chromium(page: Path, profile_dir: Path, *args: str, fragment: str = "") -> str:
    """Load `page` in headless Chromium; returns stdout (the DOM with --dump-dom)."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile_dir}", "--window-size=1200,800",
        *args, f"{page.as_uri()}{fragment}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)
    return done.stdout


class FrameCollector(HTMLParser):
    """The frame elements the page's script built: (text, classes, style) per div.f."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[str, set[str], str]] = []
        self.texts: dict[str, str] = {}
        self._open: tuple[set[str], str] | None = None
        self._id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        classes = set((found.get("class") or "").split())
        if tag == "div" and "f" in classes:
            self._open = (classes, found.get("style") or "")
            self.frames.append(("", *self._open))
        self._id = found.get("id")

    def handle_data(self, data: str) -> None:
        if self._open is not None and self.frames:
            text, classes, style = self.frames[-1]
            self.frames[-1] = (text + data, classes, style)
        if self._id:
            self.texts[self._id] = self.texts.get(self._id, "") + data

    def handle_endtag(self, tag: str) -> None:
        self._open = None
        self._id = None


def parse_dom(dom: str) -> FrameCollector:
    collector = FrameCollector()
    collector.feed(dom)
    return collector


def png_pixels(data: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct colours of an 8-bit RGB(A) non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour_type in (2, 6)
    channels = 4 if colour_type == 6 else 3
    raw, stride = zlib.decompress(idat), width * channels
    previous, colours = bytearray(stride), set[bytes]()
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + best) & 0xFF
        colours.update(bytes(line[i : i + 3]) for i in range(0, stride, channels * 7))
        previous = line
    return width, height, colours


def write_page(tmp_path: Path, name: str = "flame.html") -> Path:
    page = tmp_path / name
    with page.open("wb") as stream:
        flamegraph_html.render(cpu_snapshot(), stream)
    return page


def test_page_is_one_small_offline_file() -> None:
    stream = io.BytesIO()
    flamegraph_html.render(cpu_snapshot(), stream)
    page = stream.getvalue().decode("utf-8")

    assert len(flamegraph_html._TEMPLATE.encode()) < 60_000
    assert "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page and "src=" not in page
    # Frame text never closes the data element early nor becomes markup.
    assert page.count("</script") == 2
    assert "<lambda>" not in page


def test_title_is_escaped() -> None:
    stream = io.BytesIO()
    render_trees([], stream, title="<b>x</b> & __DATA__")
    page = stream.getvalue().decode()
    assert "<title>&lt;b&gt;x&lt;/b&gt; &amp; __DATA__</title>" in page


def test_browser_draws_every_frame_with_its_name(tmp_path: Path) -> None:
    page = write_page(tmp_path)

    html = run_chromium(page, tmp_path / "chrome", "--dump-dom")
    dom = parse_dom(html)

    names = [text for text, _, _ in dom.frames]
    assert len(names) == 16  # all + 2 processes + 13 frames of the on-CPU profile
    assert set(AWKWARD_FRAMES) <= set(names)
    assert {"all", "app", "db", "compute", "vfs_write_[k]"} <= set(names)
    assert "cpu: 100 samples in total" in dom.texts["info"]
    # on-CPU and off-CPU selectable
    assert '<option value="0">cpu (count)</option><option value="1">off_cpu' in html


def test_screenshot_shows_a_coloured_flamegraph(tmp_path: Path) -> None:
    page = write_page(tmp_path)
    shot = tmp_path / "shot.png"

    run_chromium(page, tmp_path / "chrome", f"--screenshot={shot}")

    width, height, colours = png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 800)
    assert len(colours) >= 8  # blank or broken pages render one or two colours


def test_link_fragment_zooms_and_searches(tmp_path: Path) -> None:
    page = write_page(tmp_path)

    dom = parse_dom(
        run_chromium(page, tmp_path / "chrome", "--dump-dom", fragment="#zoom=main&search=comp")
    )

    assert dom.texts["match"] == "Matched: 75.00% (1 frames)"
    assert dom.texts["info"].endswith("zoomed into main")
    by_name = {text: classes for text, classes, _ in dom.frames}
    assert "anc" in by_name["_start"]  # ancestors of the zoomed frame stay, faded
    assert "m" in by_name["compute"]
    assert "db" not in by_name  # outside the zoomed frame


def test_differential_colours_follow_delta(tmp_path: Path) -> None:
    tree = FlameNode("all", 100, delta=0.0)
    tree.children["grew"] = FlameNode("grew", 60, 60, delta=20.0, kind="native")
    tree.children["shrank"] = FlameNode("shrank", 40, 40, delta=-10.0, kind="native")
    page = tmp_path / "diff.html"
    with page.open("wb") as stream:
        render_trees([("cpu", tree, "count")], stream, title="diff", differential=True)

    dom = parse_dom(run_chromium(page, tmp_path / "chrome", "--dump-dom"))

    style = {text: style for text, _, style in dom.frames}
    assert "rgb(255, 40, 40)" in style["grew"]  # the largest change is the deepest red
    assert "rgb(135, 135, 255)" in style["shrank"]
    assert "rgb(238, 238, 238)" in style["all"]


def _wide_profile(stacks: int) -> StackProfile:
    return StackProfile(
        "cpu",
        "samples",
        "count",
        tuple(
            StackCount(1, 1, "big", ("main", f"mid{i % 300}", f"leaf{i}"), 1 + i % 7)
            for i in range(stacks)
        ),
    )


def test_large_trees_fold_narrow_frames_into_their_parent() -> None:
    tree = build_tree(_wide_profile(30_000))

    flat = flatten_tree(tree, differential=False)

    nodes = flat["nodes"]
    assert flat["pruned"] is True
    count = len(nodes) // 6
    assert count < 1_000
    # value = self + pruned + kept children, for every node kept
    children_sum: dict[int, int] = {}
    stack: list[tuple[int, int]] = []
    for index in range(count):
        value, self_value, child_count, pruned = (
            nodes[index * 6 + 1], nodes[index * 6 + 2], nodes[index * 6 + 4], nodes[index * 6 + 5],
        )  # fmt: skip
        while stack and stack[-1][1] == 0:
            stack.pop()
        if stack:
            parent, remaining = stack.pop()
            children_sum[parent] = children_sum.get(parent, 0) + value
            stack.append((parent, remaining - 1))
        stack.append((index, child_count))
        children_sum.setdefault(index, 0)
        assert value >= self_value + pruned
    for index in range(count):
        value, self_value, pruned = nodes[index * 6 + 1], nodes[index * 6 + 2], nodes[index * 6 + 5]
        assert value == self_value + pruned + children_sum[index]


def test_small_trees_keep_every_frame() -> None:
    flat = flatten_tree(build_tree(_wide_profile(300)), differential=False)
    assert flat["pruned"] is False
    assert len(flat["nodes"]) // 6 == 3 + 300 + 300


def test_hundred_thousand_stacks_render_a_bounded_page(tmp_path: Path) -> None:
    profile = _wide_profile(100_000)
    stream = io.BytesIO()
    # How long this takes against a plain JSON dump of the stacks: bench/symbolize.py.
    render_trees([("cpu", build_tree(profile), "count")], stream, title="big")
    assert len(stream.getvalue()) < 200_000


def test_units_reach_the_page(tmp_path: Path) -> None:
    snapshot = mem_snapshot()
    page = tmp_path / "mem.html"
    with page.open("wb") as stream:
        flamegraph_html.render(snapshot, stream)

    dom = parse_dom(run_chromium(page, tmp_path / "chrome", "--dump-dom"))

    assert "outstanding_bytes: 5.0 KiB (5,120 bytes) in total" in dom.texts["info"]


def test_a_huge_command_line_is_cut_in_the_page_title() -> None:
    import dataclasses

    from otlp_ebpf.formatters.flamegraph_html import snapshot_title

    command = "command: ./bench " + "--flag=" * 60_000  # ~400 KB
    snapshot = dataclasses.replace(cpu_snapshot(), targets=(command,))
    title = snapshot_title(snapshot)
    assert len(title) < 400
    assert title.startswith("cpu flamegraph: command: ./bench --flag=")
    assert f"({len(command):,} characters)" in title
    stream = io.BytesIO()
    flamegraph_html.render(snapshot, stream)
    assert len(stream.getvalue()) < 200_000
