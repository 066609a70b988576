"""A recording as one offline HTML page: timeline charts, tables that follow a time window,
and the flamegraph.

Every chart shares one time axis (seconds from the start of the run; a point is an interval,
placed at its end). Dragging across any chart selects a window; the tables then show the
intervals that overlap it (functions, syscalls, connections), and `page.html#window=A,B` opens
with that window. Without a window the tables show the sections' exact totals. Everything is
inline (no request leaves the page) and every name from the host reaches it only as JSON data
shown with `textContent`, never as markup.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

from otlp_ebpf import hosttext
from otlp_ebpf.formatters.flamegraph_html import embeddable_flamegraph, script_json
from otlp_ebpf.formatters.flametree import build_tree
from otlp_ebpf.model import (
    OTHER_KEY,
    CpuSnapshot,
    MemSnapshot,
    NetSnapshot,
    RecordSnapshot,
    Snapshot,
    SyscallsSnapshot,
    connection_label,
)

TOP_LINES = 5  # lines per chart; the rest are summed as OTHER_KEY where a sum means something
TOP_ROWS = 50
_PLACEHOLDER = re.compile(r"__(TITLE|DATA|FLAME_STYLE|FLAME_BODY)__")


def render(snapshot: Snapshot, stream: BinaryIO) -> None:
    """Write the report page of a recording."""
    if not isinstance(snapshot, RecordSnapshot):
        raise TypeError("record_html renders recordings only")
    flame_style, flame_body = embeddable_flamegraph(
        [(p.name, build_tree(p), p.unit) for p in snapshot.stack_profiles()]
    )
    values = {
        "TITLE": html.escape(title(snapshot)),
        "DATA": script_json(page_data(snapshot)),
        "FLAME_STYLE": flame_style,
        "FLAME_BODY": flame_body,
    }
    page = _PLACEHOLDER.sub(lambda m: values[m.group(1)], _TEMPLATE)
    stream.write(page.encode("utf-8"))


def title(snapshot: RecordSnapshot) -> str:
    targets = hosttext.shorten(", ".join(snapshot.targets)) or "all processes"
    return f"recording: {targets} on {snapshot.host} ({snapshot.duration_s:g} s)"


def page_data(snapshot: RecordSnapshot) -> dict[str, Any]:
    """Everything the page's script draws: times, chart series, and per-interval and
    whole-run table rows."""
    rows = snapshot.timeline
    return {
        "duration": snapshot.duration_s,
        "times": [r.t_s for r in rows],
        "starts": [0.0, *(r.t_s for r in rows[:-1])],
        "notes": list(snapshot.notes),
        "charts": charts(snapshot),
        "tables": tables(snapshot),
        "findings": findings_data(snapshot),
    }


# ---------------------------------------------------------------- analyze's findings
# The findings `otlp-ebpf analyze` gives for this recording (docs/analyze.md), listed above
# the charts and marked on every chart as a band over their window; a click on one selects
# its window. Kept apart from the report's own parts: analysis owns what a finding is.


def findings_data(snapshot: RecordSnapshot) -> list[dict[str, Any]]:
    from otlp_ebpf.analysis.analyze import analyze

    return [
        {
            "rank": f.rank,
            "kind": f.kind,
            "summary": f.summary,
            "start_s": f.start_s,
            "end_s": f.end_s,
        }
        for f in analyze(snapshot).findings
    ]


def _line(name: str, values: list[float]) -> dict[str, Any]:
    return {"name": name, "values": values}


def _top_lines(
    per_row: Sequence[Mapping[str, float]], keep_other: bool = True
) -> list[dict[str, Any]]:
    """One line per key for the TOP_LINES keys with the largest sums; the rest as one
    OTHER_KEY line when a sum of them means something (counts, bytes)."""
    total: Counter[str] = Counter()
    for values in per_row:
        total.update(values)
    keep = [k for k, _ in total.most_common() if k != OTHER_KEY][:TOP_LINES]
    lines = [_line(k, [values.get(k, 0) for values in per_row]) for k in keep]
    if keep_other:
        rest = [sum(v for k, v in values.items() if k not in keep) for values in per_row]
        if any(rest):
            lines.append(_line(OTHER_KEY, rest))
    return lines


def charts(snapshot: RecordSnapshot) -> list[dict[str, Any]]:
    rows = snapshot.timeline
    out: list[dict[str, Any]] = []

    def add(chart_id: str, label: str, unit: str, lines: list[dict[str, Any]]) -> None:
        if lines:
            out.append({"id": chart_id, "title": label, "unit": unit, "lines": lines})

    if "cpu" in snapshot.signals:
        pids = [{k: float(v) for k, v in (r.cpu.samples if r.cpu else {}).items()} for r in rows]
        names = _process_names(snapshot)
        lines = _top_lines(pids)
        for line in lines:
            line["name"] = names.get(line["name"], line["name"])
        add("cpu-processes", "cpu: samples per process", "samples", lines)
        functions = [r.cpu.functions if r.cpu else {} for r in rows]
        add("cpu-functions", "cpu: samples per function", "samples", _top_lines(functions))
    if "syscalls" in snapshot.signals:
        ticks = [r.syscalls or () for r in rows]
        counts = [{t.name: float(t.count) for t in row} for row in ticks]
        errors = [{t.name: float(t.errors) for t in row if t.errors} for row in ticks]
        p99 = [{t.name: t.p99_ns / 1000 for t in row} for row in ticks]
        add("syscalls-count", "syscalls: calls per interval", "calls", _top_lines(counts))
        add("syscalls-errors", "syscalls: errors per interval", "errors", _top_lines(errors))
        busiest = [line["name"] for line in _top_lines(counts, keep_other=False)]
        add(
            "syscalls-p99",
            "syscalls: p99 latency in the interval",
            "us",
            [_line(n, [v.get(n, 0) for v in p99]) for n in busiest],
        )
    if "net" in snapshot.signals:
        net = [r.net for r in rows]
        conns = [n.connections if n else () for n in net]
        add(
            "net-bytes",
            "net: bytes per interval",
            "bytes",
            [
                _line("tx", [float(sum(c.tx_bytes for c in row)) for row in conns]),
                _line("rx", [float(sum(c.rx_bytes for c in row)) for row in conns]),
            ],
        )
        add(
            "net-events",
            "net: retransmits, resets and drops per interval",
            "events",
            [
                _line("retransmits", [float(sum(c.retransmits for c in row)) for row in conns]),
                _line("resets", [float(sum(c.resets for c in row)) for row in conns]),
                _line("drops", [float(sum(n.drops.values())) if n else 0.0 for n in net]),
            ],
        )
    if "mem" in snapshot.signals:
        mem = [r.mem for r in rows]
        add(
            "mem-outstanding",
            "mem: outstanding bytes",
            "bytes",
            [_line("outstanding", [float(m.outstanding_bytes) if m else 0.0 for m in mem])],
        )
        add(
            "mem-rate",
            "mem: allocations, frees and page faults per interval",
            "calls",
            [
                _line("allocations", [float(m.allocations) if m else 0.0 for m in mem]),
                _line("frees", [float(m.frees) if m else 0.0 for m in mem]),
                _line("page faults", [float(m.page_faults) if m else 0.0 for m in mem]),
            ],
        )
    return out


def _process_names(snapshot: RecordSnapshot) -> dict[str, str]:
    return {str(p.pid): f"{p.comm} ({p.pid})" for p in snapshot.processes}


def tables(snapshot: RecordSnapshot) -> dict[str, Any]:
    """Per table: the whole run's rows (exact, from the sections) and, for the tables that
    can follow a window, each interval's rows."""
    rows = snapshot.timeline
    out: dict[str, Any] = {}
    cpu = snapshot.signals.get("cpu")
    if isinstance(cpu, CpuSnapshot):
        whole: Counter[str] = Counter()
        for stack in cpu.stacks:
            whole[stack.frames[-1] if stack.frames else OTHER_KEY] += stack.count
        out["functions"] = {
            "whole": [[name, n] for name, n in whole.most_common(TOP_ROWS)],
            "per_row": [dict(r.cpu.functions) if r.cpu else {} for r in rows],
        }
    syscalls = snapshot.signals.get("syscalls")
    if isinstance(syscalls, SyscallsSnapshot):
        from otlp_ebpf.formatters.syscalls_table import merge_by_name

        merged = sorted(merge_by_name(list(syscalls.syscalls)), key=lambda s: (-s.count, s.name))
        out["syscalls"] = {
            "whole": [[s.name, s.count, s.errors, s.p50_ns, s.p99_ns] for s in merged],
            "per_row": [
                [[t.name, t.count, t.errors, t.p50_ns, t.p99_ns] for t in (r.syscalls or ())]
                for r in rows
            ],
        }
    net = snapshot.signals.get("net")
    if isinstance(net, NetSnapshot):
        out["connections"] = {
            "whole": [
                [
                    connection_label(c),
                    c.tx_bytes,
                    c.rx_bytes,
                    c.retransmits,
                    c.resets_sent + c.resets_received,
                    c.srtt_us,
                ]
                for c in sorted(net.connections, key=lambda c: -(c.tx_bytes + c.rx_bytes))
            ][:TOP_ROWS],
            "per_row": [
                [
                    [c.label, c.tx_bytes, c.rx_bytes, c.retransmits, c.resets, c.srtt_us]
                    for c in (r.net.connections if r.net else ())
                ]
                for r in rows
            ],
        }
    mem = snapshot.signals.get("mem")
    if isinstance(mem, MemSnapshot):
        out["outstanding"] = {
            "whole": [
                [a.pid, a.comm, " < ".join(reversed(a.frames[-4:])), a.bytes, a.count]
                for a in mem.outstanding[:TOP_ROWS]
            ],
        }
    return out


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>__FLAME_STYLE__</style>
<style>
h2{font-size:14px;margin:18px 0 6px}
#window{margin:6px 0;color:#333}
.chart{margin:2px 0 10px;user-select:none}
.chart h3{font-size:12px;margin:4px 0 0;font-weight:600}
.chart svg{width:100%;height:auto;display:block;cursor:crosshair}
.legend span{margin-right:10px;font-size:11px}
.legend i{display:inline-block;width:10px;height:3px;margin-right:3px;vertical-align:middle}
table.t{border-collapse:collapse;font:12px ui-monospace,monospace;margin-bottom:4px}
table.t th,table.t td{border-bottom:1px solid #ddd;padding:2px 8px;text-align:right}
table.t th:first-child,table.t td:first-child{text-align:left}
table.t td.name{text-align:left;max-width:720px;overflow-wrap:anywhere}
.scope{color:#555;font-size:11px}
</style></head><body>
<h1>__TITLE__</h1>
<div id="window">Window: <span id="window-label">the whole run</span>
 <button id="whole" type="button">Show the whole run</button>
 <span class="scope">(drag across a chart to select a window)</span></div>
<div id="findings"></div>
<div id="charts"></div>
<div id="tables"></div>
<h2>Flamegraph (the whole run)</h2>
__FLAME_BODY__
<script type="application/json" id="record-data">__DATA__</script>
<script>
(function () {
"use strict";
var D = JSON.parse(document.getElementById("record-data").textContent);
var SVGNS = "http://www.w3.org/2000/svg";
var W = 960, H = 150, L = 64, R = 12, T = 8, B = 22;
var COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#7f7f7f"];
var win = null, drag = null, overlays = [];
var span = Math.max(D.duration, D.times.length ? D.times[D.times.length - 1] : 0, 1e-9);

function x(t) { return L + (W - L - R) * t / span; }
function tAt(svg, clientX) {
  var box = svg.getBoundingClientRect(), px = (clientX - box.left) * W / box.width;
  return Math.max(0, Math.min(span, (px - L) * span / (W - L - R)));
}
function el(name, attrs, parent) {
  var e = document.createElementNS(SVGNS, name);
  for (var k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
function group(v) {
  var s = Math.abs(v) >= 100 || v === Math.round(v) ? Math.round(v).toString() : v.toFixed(1);
  return s.replace(/\\B(?=(\\d{3})+(?!\\d))/g, ",");
}
function short(v) {
  var a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return group(v);
}
function drawChart(c) {
  var box = document.createElement("div");
  box.className = "chart";
  box.id = "chart-" + c.id;
  var h = document.createElement("h3");
  h.textContent = c.title + " (" + c.unit + ")";
  box.appendChild(h);
  var svg = el("svg", {viewBox: "0 0 " + W + " " + H, "data-chart": c.id});
  var max = 0;
  c.lines.forEach(function (line) {
    line.values.forEach(function (v) { if (v > max) max = v; });
  });
  max = max > 0 ? max : 1;
  function y(v) { return T + (H - T - B) * (1 - v / max); }
  el("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#999"}, svg);
  el("line", {x1: L, x2: L, y1: T, y2: H - B, stroke: "#999"}, svg);
  var top = el("text", {x: L - 4, y: T + 8, "text-anchor": "end", "font-size": 10}, svg);
  top.textContent = short(max);
  var step = Math.max(1, Math.ceil(span / 12));
  for (var s = 0; s <= span + 1e-9; s += step) {
    el("line", {x1: x(s), x2: x(s), y1: H - B, y2: H - B + 4, stroke: "#999"}, svg);
    var label = el("text", {x: x(s), y: H - 6, "text-anchor": "middle", "font-size": 10}, svg);
    label.textContent = s + " s";
  }
  var legend = document.createElement("div");
  legend.className = "legend";
  c.lines.forEach(function (line, i) {
    var colour = COLOURS[i % COLOURS.length];
    var pts = line.values.map(function (v, k) { return x(D.times[k]) + "," + y(v); });
    el("polyline", {points: pts.join(" "), fill: "none", stroke: colour, "stroke-width": 1.5},
      svg);
    line.values.forEach(function (v, k) {
      var p = el("circle", {cx: x(D.times[k]), cy: y(v), r: 2.5, fill: colour, "class": "pt",
        "data-line": line.name}, svg);
      var tip = el("title", {}, p);
      tip.textContent = line.name + " at " + D.times[k] + " s: " + group(v) + " " + c.unit;
    });
    var item = document.createElement("span"), mark = document.createElement("i");
    mark.style.background = colour;
    item.appendChild(mark);
    item.appendChild(document.createTextNode(line.name));
    legend.appendChild(item);
  });
  var sel = el("rect", {y: T, height: H - T - B, fill: "rgba(80,120,255,0.15)",
    stroke: "rgba(80,120,255,0.6)", "class": "window", visibility: "hidden"}, svg);
  overlays.push(sel);
  svg.addEventListener("mousedown", function (ev) {
    drag = {svg: svg, from: tAt(svg, ev.clientX)};
    ev.preventDefault();
  });
  box.appendChild(svg);
  box.appendChild(legend);
  document.getElementById("charts").appendChild(box);
}
document.addEventListener("mousemove", function (ev) {
  if (!drag) return;
  var t = tAt(drag.svg, ev.clientX);
  showWindow(Math.min(drag.from, t), Math.max(drag.from, t));
});
document.addEventListener("mouseup", function (ev) {
  if (!drag) return;
  var t = tAt(drag.svg, ev.clientX), a = Math.min(drag.from, t), b = Math.max(drag.from, t);
  drag = null;
  setWindow(b - a > span / 200 ? [a, b] : null);
});
function showWindow(a, b) {
  overlays.forEach(function (r) {
    r.setAttribute("x", x(a));
    r.setAttribute("width", Math.max(1, x(b) - x(a)));
    r.setAttribute("visibility", "visible");
  });
}
function inWindow(k) { return !win || (D.starts[k] < win[1] && D.times[k] > win[0]); }
function chosenRows() {
  var out = [];
  for (var k = 0; k < D.times.length; k++) if (inWindow(k)) out.push(k);
  return out;
}
function fmt(v, kind) {
  if (kind === "us") return (v / 1000).toFixed(1);
  if (typeof v === "number") return group(v);
  return String(v);
}
function table(id, heading, columns, rows, scope) {
  var wrap = document.getElementById("wrap-" + id);
  if (!wrap) {
    wrap = document.createElement("section");
    wrap.id = "wrap-" + id;
    document.getElementById("tables").appendChild(wrap);
  }
  wrap.textContent = "";
  var h = document.createElement("h2");
  h.textContent = heading;
  var note = document.createElement("div");
  note.className = "scope";
  note.textContent = scope;
  var t = document.createElement("table");
  t.className = "t";
  t.id = "table-" + id;
  var head = t.createTHead().insertRow();
  columns.forEach(function (c) {
    var th = document.createElement("th");
    th.textContent = c[0];
    head.appendChild(th);
  });
  var body = t.createTBody();
  rows.forEach(function (row) {
    var tr = body.insertRow();
    row.forEach(function (v, i) {
      var td = tr.insertCell();
      td.textContent = fmt(v, columns[i][1]);
      if (i === 0 || columns[i][1] === "name") td.className = "name";
    });
  });
  wrap.appendChild(h);
  wrap.appendChild(note);
  wrap.appendChild(t);
}
function sumRows(perRow, merge) {
  var acc = {}, order = [];
  chosenRows().forEach(function (k) {
    perRow[k].forEach(function (r) {
      var name = r[0];
      if (!(name in acc)) { acc[name] = r.slice(); order.push(name); return; }
      merge(acc[name], r);
    });
  });
  return order.map(function (n) { return acc[n]; });
}
function renderTables() {
  var T = D.tables, scope = win ? "intervals overlapping " + win[0].toFixed(2) + "-" +
    win[1].toFixed(2) + " s (" + chosenRows().length + " of " + D.times.length + ")"
    : "the whole run";
  if (T.functions) {
    var f;
    if (!win) f = T.functions.whole;
    else {
      var acc = {};
      chosenRows().forEach(function (k) {
        var r = T.functions.per_row[k];
        for (var n in r) acc[n] = (acc[n] || 0) + r[n];
      });
      f = Object.keys(acc).map(function (n) { return [n, acc[n]]; });
    }
    f = f.slice().sort(function (a, b) { return b[1] - a[1]; });
    table("functions", "cpu: samples per function (leaf)",
      [["function", "name"], ["samples", "n"]], f, scope);
  }
  if (T.syscalls) {
    var s = win ? sumRows(T.syscalls.per_row, function (a, r) {
      a[1] += r[1]; a[2] += r[2]; a[3] = Math.max(a[3], r[3]); a[4] = Math.max(a[4], r[4]);
    }) : T.syscalls.whole;
    s = s.slice().sort(function (a, b) { return b[1] - a[1]; });
    table("syscalls", "syscalls", [["syscall", "name"], ["count", "n"], ["errors", "n"],
      [win ? "p50 us (worst interval)" : "p50 us", "us"],
      [win ? "p99 us (worst interval)" : "p99 us", "us"]], s, scope);
  }
  if (T.connections) {
    var c = win ? sumRows(T.connections.per_row, function (a, r) {
      a[1] += r[1]; a[2] += r[2]; a[3] += r[3]; a[4] += r[4]; a[5] = r[5] || a[5];
    }) : T.connections.whole;
    c = c.slice().sort(function (a, b) { return (b[1] + b[2]) - (a[1] + a[2]); });
    table("connections", "net: connections", [["connection", "name"], ["tx bytes", "n"],
      ["rx bytes", "n"], ["retransmits", "n"], ["resets", "n"], ["srtt us", "n"]], c, scope);
  }
  if (T.outstanding) {
    table("outstanding", "mem: outstanding allocations by stack",
      [["pid", "n"], ["comm", "name"], ["stack (leaf first)", "name"], ["bytes", "n"],
       ["allocations", "n"]], T.outstanding.whole,
      "at the end of the run (allocations by stack are not kept per interval)");
  }
}
function setWindow(w) {
  win = w;
  if (w) showWindow(w[0], w[1]);
  else overlays.forEach(function (r) { r.setAttribute("visibility", "hidden"); });
  document.getElementById("window-label").textContent = w ?
    w[0].toFixed(2) + " s to " + w[1].toFixed(2) + " s" : "the whole run";
  var hash = w ? "#window=" + w[0].toFixed(3) + "," + w[1].toFixed(3) : "";
  if (history.replaceState) {
    history.replaceState(null, "", location.pathname + location.search + hash);
  }
  renderTables();
}
document.getElementById("whole").addEventListener("click", function () { setWindow(null); });
D.charts.forEach(drawChart);
// analyze's findings (findings_data): a list above the charts, a band on every chart.
(function () {
  var fs = D.findings || [], box = document.getElementById("findings");
  if (!fs.length) return;
  var h = document.createElement("h2");
  h.textContent = "Findings (otlp-ebpf analyze)";
  box.appendChild(h);
  var list = document.createElement("ol");
  list.id = "findings-list";
  fs.forEach(function (f) {
    var item = document.createElement("li"), go = document.createElement("button");
    go.type = "button";
    go.textContent = f.start_s.toFixed(2) + "-" + f.end_s.toFixed(2) + " s";
    go.addEventListener("click", function () { setWindow([f.start_s, f.end_s]); });
    item.appendChild(go);
    item.appendChild(document.createTextNode(" " + f.summary));
    list.appendChild(item);
    document.querySelectorAll("#charts svg").forEach(function (svg) {
      var band = el("rect", {x: x(f.start_s), width: Math.max(x(f.end_s) - x(f.start_s), 1),
        y: T, height: H - T - B, fill: "rgba(214,39,40,0.10)", "class": "finding",
        "data-rank": f.rank}, null);
      svg.insertBefore(band, svg.firstChild);
      el("title", {}, band).textContent = f.rank + ". " + f.summary;
    });
  });
  box.appendChild(list);
})();
var m = /[#&]window=([0-9.]+),([0-9.]+)/.exec(location.hash);
var a = m ? parseFloat(m[1]) : NaN, b = m ? parseFloat(m[2]) : NaN;
if (m && isFinite(a) && isFinite(b) && b > a) setWindow([a, b]);
else renderTables();
})();
</script>
</body></html>
"""
