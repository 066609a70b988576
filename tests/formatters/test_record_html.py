"""The recording report in a real browser (headless chromium): it renders offline, its charts
have one point per interval and line, a window given in the URL narrows the tables, and
names from the host are text, never markup."""

from __future__ import annotations

import re

import pytest

from otlp_ebpf.formatters import registry
from otlp_ebpf.model import (
    OTHER_KEY,
    CpuSnapshot,
    CpuTick,
    RecordSnapshot,
    StackCount,
    SyscallsSnapshot,
    SyscallStat,
    SyscallTick,
    TimelineRow,
)
from tests.browser import chart_points, dump_dom, table_rows

HOSTILE = "<img src=x onerror=alert(1)>"


def tick(name: str, count: int, errors: int = 0) -> SyscallTick:
    return SyscallTick(name, count, errors, 1000, 2000)


def stat(name: str, count: int, errors: int) -> SyscallStat:
    return SyscallStat(7, "w", name, count, errors, {}, count * 1000, 1000, 2000, 4000)


def recording() -> RecordSnapshot:
    """getppid throughout; mkdir failing from the second interval on; a hostile name once."""
    rows = (
        TimelineRow(1.0, cpu=CpuTick({"7": 10}, {"spin": 10}), syscalls=(tick("getppid", 10),)),
        TimelineRow(
            2.0,
            cpu=CpuTick({"7": 20}, {"spin": 15, OTHER_KEY: 5}),
            syscalls=(tick("getppid", 20), tick("mkdir", 5, 5)),
        ),
        TimelineRow(
            3.0,
            cpu=CpuTick({"7": 30}, {"spin": 30}),
            syscalls=(tick("getppid", 30), tick("mkdir", 7, 7), tick(HOSTILE, 1)),
        ),
        TimelineRow(3.5, cpu=CpuTick({"7": 5}, {"spin": 5}), syscalls=(tick("getppid", 5),)),
    )
    common = {"started_at": "t", "duration_s": 3.5, "host": "h"}
    syscalls = SyscallsSnapshot(
        **common,
        syscalls=(stat("getppid", 65, 0), stat("mkdir", 12, 12), stat(HOSTILE, 1, 0)),
    )
    cpu = CpuSnapshot(
        **common,
        samples_total=65,
        stacks=(StackCount(7, 7, "w", ("main", "spin"), 60), StackCount(7, 7, "w", ("main",), 5)),
    )
    return RecordSnapshot(**common, signals={"cpu": cpu, "syscalls": syscalls}, timeline=rows)


def write_page(tmp_path) -> object:
    page = tmp_path / "rec.html"
    fmt = registry.format_for_path(str(page))
    registry.write_output(recording(), str(page), fmt)
    return page


@pytest.fixture(scope="module")
def whole_run_dom(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The page without a window in its URL, as the browser built it: one load read by
    several tests."""
    return dump_dom(write_page(tmp_path_factory.mktemp("record-html")))


def counts(dom: str) -> dict[str, tuple[str, str]]:
    return {row[0]: (row[1], row[2]) for row in table_rows(dom, "table-syscalls")}


def test_page_is_offline_and_self_contained(tmp_path):
    text = write_page(tmp_path).read_text()
    assert "default-src 'none'" in text
    assert not re.search(r"<[a-z][^>]*\s(src|href)\s*=", text)  # no element loads anything
    assert not re.search(r"https?://", text.replace("http://www.w3.org/2000/svg", ""))


def test_charts_have_one_point_per_interval_and_line(whole_run_dom):
    dom = whole_run_dom
    assert chart_points(dom, "syscalls-count") == 4 * 3  # getppid, mkdir, the hostile name
    assert chart_points(dom, "syscalls-errors") == 4
    assert chart_points(dom, "cpu-processes") == 4
    assert chart_points(dom, "cpu-functions") == 4 * 2  # spin and [other]


def test_tables_show_the_whole_run_without_a_window(whole_run_dom):
    dom = whole_run_dom
    assert counts(dom)["getppid"] == ("65", "0")
    assert counts(dom)["mkdir"] == ("12", "12")
    assert re.search(r'id="window-label">the whole run<', dom)
    # the flamegraph rendered its frames
    assert len(re.findall(r'<div class="f[ "]', dom)) >= 3


def test_a_window_in_the_url_narrows_the_tables(tmp_path):
    page = write_page(tmp_path)
    second = dump_dom(page, "#window=1.2,1.8")  # inside the second interval only
    assert counts(second) == {"getppid": ("20", "0"), "mkdir": ("5", "5")}
    functions = {row[0]: row[1] for row in table_rows(second, "table-functions")}
    assert functions == {"spin": "15", OTHER_KEY: "5"}
    first = dump_dom(page, "#window=0,0.9")
    assert counts(first) == {"getppid": ("10", "0")}
    later = dump_dom(page, "#window=1.5,3.2")  # overlaps the last three intervals
    assert counts(later)["getppid"] == ("55", "0")
    assert re.search(r'id="window-label">1.50 s to 3.20 s<', later)


def test_host_names_are_text_not_markup(whole_run_dom):
    dom = whole_run_dom
    assert "<img" not in dom
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom


# A harness page that loads the report in a frame and drags across its syscall chart with
# real mouse events, from 1.2 s to 1.8 s, then copies what the report shows into its own DOM.
DRAG_HARNESS = """<!DOCTYPE html><html><body><div id="out"></div>
<script>
var frame = document.createElement("iframe");
frame.style.width = "1200px";
frame.style.height = "900px";
frame.addEventListener("load", function () {
  var doc = frame.contentDocument, win = frame.contentWindow;
  var svg = doc.querySelector('svg[data-chart="syscalls-count"]');
  var box = svg.getBoundingClientRect(), y = box.top + box.height / 2;
  function at(t) { return box.left + (64 + (960 - 64 - 12) * t / 3.5) * box.width / 960; }
  function mouse(target, kind, t) {
    target.dispatchEvent(new win.MouseEvent(kind, {clientX: at(t), clientY: y, bubbles: true}));
  }
  mouse(svg, "mousedown", 1.2);
  mouse(doc, "mousemove", 1.5);
  mouse(doc, "mouseup", 1.8);
  document.getElementById("out").innerHTML = doc.getElementById("tables").outerHTML +
    doc.getElementById("window-label").outerHTML + "<p id=hash>" + win.location.hash + "</p>";
});
frame.src = "rec.html";  // the listener is in place before the frame can load
document.body.appendChild(frame);
</script></body></html>
"""


def test_dragging_across_a_chart_selects_the_window_the_tables_follow(tmp_path):
    write_page(tmp_path)
    harness = tmp_path / "drag.html"
    harness.write_text(DRAG_HARNESS)
    dom = dump_dom(harness, "", "--allow-file-access-from-files")
    assert counts(dom) == {"getppid": ("20", "0"), "mkdir": ("5", "5")}
    assert re.search(r'id="window-label">1.20 s to 1.80 s<', dom)
    assert re.search(r'id="hash">#window=1.200,1.7\d\d<', dom)
