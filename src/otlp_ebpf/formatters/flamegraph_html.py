"""An interactive flamegraph in one offline HTML file: inline CSS and JS, no network.

Click a frame to zoom into it, Reset (or Esc) to zoom out, type in the search box to highlight
matching frames and see their share; `page.html#zoom=FRAME&search=TEXT` opens with that view.
Several profiles (on-CPU and off-CPU, bytes and objects) sit in one file behind a selector.
Large trees (more than `PRUNE_ABOVE_NODES` nodes) fold frames narrower than 0.1% of the total
into their parent; the parent's tooltip says how much.
Frame names reach the page only as JSON data and are shown with `textContent`, never as markup.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any, BinaryIO

from otlp_ebpf import hosttext
from otlp_ebpf.formatters.flametree import FlameNode, build_tree
from otlp_ebpf.model import Snapshot

PRUNE_ABOVE_NODES = 10_000
PRUNE_FRACTION = 0.001

_PLACEHOLDER = re.compile(r"__(TITLE|DATA)__")
_KIND_CODES = {None: 0, "comm": 1, "native": 2, "kernel": 3}
_FIELDS_PER_NODE = 6  # name index, value, self, kind, child count, pruned weight


def _prune_threshold(tree: FlameNode) -> float:
    for count, _ in enumerate(tree.walk(), start=1):
        if count > PRUNE_ABOVE_NODES:
            return tree.value * PRUNE_FRACTION
    return 0.0


def flatten_tree(tree: FlameNode, *, differential: bool) -> dict[str, Any]:
    """The tree as compact pre-order arrays for the page's script to rebuild."""
    threshold = _prune_threshold(tree)
    names: dict[str, int] = {}
    nodes: list[int] = []
    deltas: list[float | None] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        kept = [c for c in node.children.values() if c.value >= threshold]
        pruned = node.value - node.self_value - sum(c.value for c in kept)
        name_index = names.setdefault(node.name, len(names))
        kind = _KIND_CODES.get(node.kind, _KIND_CODES["native"])
        nodes += [name_index, node.value, node.self_value, kind, len(kept)]
        nodes.append(pruned)
        deltas.append(None if node.delta is None else round(node.delta, 4))
        pending.extend(reversed(kept))
    return {
        "names": list(names),
        "nodes": nodes,
        "deltas": deltas if differential else None,
        "pruned": threshold > 0,
    }


def script_json(data: Any) -> str:
    """JSON that cannot end the <script> element it sits in, whatever the frame names hold."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_trees(
    trees: list[tuple[str, FlameNode, str]],
    stream: BinaryIO,
    *,
    title: str,
    differential: bool = False,
) -> None:
    """Write one HTML page showing each (label, tree, unit), the first one selected.

    With `differential`, frames are coloured by `FlameNode.delta` (red grew, blue shrank).
    """
    profiles = [
        {
            "label": label,
            "unit": unit,
            "total": tree.value,
            **flatten_tree(tree, differential=differential),
        }
        for label, tree, unit in trees
    ]
    data = {"differential": differential, "profiles": profiles}
    values = {"TITLE": html.escape(title), "DATA": script_json(data)}
    # One pass, so a frame name that happens to read "__TITLE__" stays as it is.
    page = _PLACEHOLDER.sub(lambda m: values[m.group(1)], _TEMPLATE)
    stream.write(page.encode("utf-8"))


def embeddable_flamegraph(trees: list[tuple[str, FlameNode, str]]) -> tuple[str, str]:
    """The CSS and the body of a flamegraph page, to place inside another offline page (the
    recording report); the same script, which needs the element ids it creates."""
    profiles = [
        {
            "label": label,
            "unit": unit,
            "total": tree.value,
            **flatten_tree(tree, differential=False),
        }
        for label, tree, unit in trees
    ]
    data = script_json({"differential": False, "profiles": profiles})
    style = _TEMPLATE.split("<style>", 1)[1].split("</style>", 1)[0]
    body = _TEMPLATE.split("<body>", 1)[1].split("</body>", 1)[0]
    body = body.replace("<h1>__TITLE__</h1>\n", "", 1)
    return style, body.replace("__DATA__", data, 1)


def snapshot_title(snapshot: Snapshot) -> str:
    targets = hosttext.shorten(", ".join(snapshot.targets)) or "all processes"
    return f"{snapshot.kind} flamegraph: {targets} on {snapshot.host} ({snapshot.duration_s:g} s)"


def render(snapshot: Snapshot, stream: BinaryIO) -> None:
    """Write every stack profile of the snapshot into one interactive page."""
    trees: list[tuple[str, FlameNode, str]] = [
        (p.name, build_tree(p), p.unit) for p in snapshot.stack_profiles()
    ]
    render_trees(trees, stream, title=snapshot_title(snapshot))


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font:12px system-ui,sans-serif;margin:8px;color:#222;background:#fff}
h1{font-size:15px;margin:0 0 6px}
#bar{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin-bottom:6px}
#bar input{width:220px}
#info,#match{color:#555}
#chart{position:relative;width:100%;overflow:hidden}
.f{position:absolute;height:17px;box-sizing:border-box;border:1px solid #fff;
 border-width:0 1px 1px 0;overflow:hidden;white-space:nowrap;text-overflow:clip;
 padding:0 2px;line-height:16px;font:11px ui-monospace,monospace;cursor:pointer}
.f.anc{opacity:.55}
.f.m{outline:2px solid #a0f;outline-offset:-2px}
#tip{position:fixed;display:none;pointer-events:none;background:#ffd;border:1px solid #999;
 padding:4px 6px;max-width:640px;word-break:break-all;font:12px ui-monospace,monospace;
 white-space:pre-wrap;z-index:9}
</style></head><body>
<h1>__TITLE__</h1>
<div id="bar">
<select id="profile" aria-label="profile"></select>
<button id="reset" type="button">Reset zoom</button>
<input id="search" type="search" placeholder="Search frames (text or /regex/)"
 aria-label="search">
<span id="match"></span><span id="info"></span>
</div>
<div id="chart"></div><div id="tip"></div>
<script type="application/json" id="flame-data">__DATA__</script>
<script>
(function () {
"use strict";
var D = JSON.parse(document.getElementById("flame-data").textContent);
var ROW = 18, KINDS = ["root", "comm", "native", "kernel"];
var chart = document.getElementById("chart"), tip = document.getElementById("tip");
var search = document.getElementById("search"), select = document.getElementById("profile");
var prof, root, focus, shown = [], matcher = null, maxDelta = 0;

function build(p) {
  var a = p.nodes, i = 0, k = 0;
  function node(parent, depth) {
    var n = {name: p.names[a[i]], value: a[i + 1], self: a[i + 2], kind: KINDS[a[i + 3]],
      pruned: a[i + 5], delta: p.deltas ? p.deltas[k] : null, parent: parent, depth: depth,
      children: []};
    var count = a[i + 4];
    i += 6; k += 1;
    if (n.delta !== null && Math.abs(n.delta) > maxDelta) maxDelta = Math.abs(n.delta);
    for (var c = 0; c < count; c++) n.children.push(node(n, depth + 1));
    return n;
  }
  maxDelta = 0;
  return node(null, 0);
}
function hash(s) {
  var h = 0;
  for (var i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) | 0;
  return Math.abs(h);
}
function colour(n) {
  if (D.differential) {
    var d = n.delta || 0, t = maxDelta > 0 ? Math.min(1, Math.abs(d) / maxDelta) : 0;
    if (Math.abs(d) < 0.005) return "rgb(238,238,238)";
    var c = Math.round(230 - 190 * t);
    return d > 0 ? "rgb(255," + c + "," + c + ")" : "rgb(" + c + "," + c + ",255)";
  }
  var h = hash(n.name);
  if (n.kind === "root") return "rgb(200,200,200)";
  if (n.kind === "comm") return "hsl(210,40%," + (68 + h % 10) + "%)";
  if (n.kind === "kernel") return "hsl(" + (28 + h % 14) + ",85%," + (58 + h % 8) + "%)";
  return "hsl(" + (h % 55) + ",80%," + (60 + h % 10) + "%)";
}
function group(x) { return Math.round(x).toString().replace(/\\B(?=(\\d{3})+(?!\\d))/g, ","); }
function amount(v) {
  var unit = prof.unit;
  if (unit === "nanoseconds") {
    var s = v >= 1e9 ? (v / 1e9).toFixed(3) + " s" : v >= 1e6 ? (v / 1e6).toFixed(3) + " ms"
      : v >= 1e3 ? (v / 1e3).toFixed(1) + " us" : v + " ns";
    return s + " (" + group(v) + " ns)";
  }
  if (unit === "bytes") {
    var b = v >= 1048576 ? (v / 1048576).toFixed(2) + " MiB" : v >= 1024 ?
      (v / 1024).toFixed(1) + " KiB" : v + " B";
    return b + " (" + group(v) + " bytes)";
  }
  return group(v) + (v === 1 ? " sample" : " samples");
}
function pct(v, total) { return total > 0 ? (100 * v / total).toFixed(2) + "%" : "0%"; }
function matches(n) { return matcher !== null && n.kind !== "root" && matcher(n.name); }

function render() {
  chart.textContent = "";
  shown = [];
  var frag = document.createDocumentFragment(), width = chart.clientWidth || 1200, depth = 0;
  function add(n, x, w, ancestor) {
    var el = document.createElement("div");
    el.className = "f" + (ancestor ? " anc" : "") + (matches(n) ? " m" : "");
    el.style.left = (x * 100) + "%";
    el.style.width = (w * 100) + "%";
    el.style.top = (n.depth * ROW) + "px";
    el.style.background = matches(n) && !D.differential ? "rgb(230,120,230)" : colour(n);
    el.textContent = w * width > 24 ? n.name : "";
    el.dataset.i = shown.length;
    shown.push(n);
    frag.appendChild(el);
    if (n.depth > depth) depth = n.depth;
  }
  function lay(n, x, w) {
    add(n, x, w, false);
    var cx = x;
    for (var c = 0; c < n.children.length; c++) {
      var child = n.children[c], cw = n.value > 0 ? w * child.value / n.value : 0;
      if (cw * width >= 0.5) lay(child, cx, cw);
      cx += cw;
    }
  }
  for (var a = focus.parent; a; a = a.parent) add(a, 0, 1, true);
  lay(focus, 0, 1);
  chart.style.height = ((depth + 1) * ROW) + "px";
  chart.appendChild(frag);
  document.getElementById("info").textContent = prof.label + ": " + amount(root.value) +
    " in total" + (prof.pruned ? "; frames under 0.1% folded into their parent" : "") +
    (focus !== root ? "; zoomed into " + focus.name : "");
  updateMatch();
}
function updateMatch() {
  var out = document.getElementById("match");
  if (matcher === null) { out.textContent = ""; return; }
  var total = 0, count = 0, stack = [root];
  while (stack.length) {
    var n = stack.pop();
    if (matches(n)) { total += n.value; count += 1; continue; }
    for (var c = 0; c < n.children.length; c++) stack.push(n.children[c]);
  }
  out.textContent = "Matched: " + pct(total, root.value) + " (" + count + " frames)";
}
function setSearch(text) {
  matcher = null;
  if (text) {
    var re = null, m = /^\\/(.+)\\/$/.exec(text);
    if (m) { try { re = new RegExp(m[1], "i"); } catch (e) { re = null; } }
    var needle = text.toLowerCase();
    matcher = re ? function (s) { return re.test(s); }
      : function (s) { return s.toLowerCase().indexOf(needle) >= 0; };
  }
  render();
}
function tipText(n) {
  var lines = [n.name, amount(n.value) + ", " + pct(n.value, root.value) + " of total"];
  if (focus !== root) lines.push(pct(n.value, focus.value) + " of " + focus.name);
  if (n.self > 0) lines.push("self: " + amount(n.self));
  if (n.pruned > 0) lines.push("includes " + amount(n.pruned) + " in frames under 0.1%");
  if (D.differential && n.delta !== null) {
    lines.push("change of share: " + (n.delta > 0 ? "+" : "") + n.delta.toFixed(2) + " pp");
  }
  return lines.join("\\n");
}
function load(index) {
  prof = D.profiles[index];
  root = focus = build(prof);
  render();
}
chart.addEventListener("click", function (ev) {
  var i = ev.target.dataset ? ev.target.dataset.i : undefined;
  if (i === undefined) return;
  focus = shown[+i];
  render();
});
chart.addEventListener("mousemove", function (ev) {
  var i = ev.target.dataset ? ev.target.dataset.i : undefined;
  if (i === undefined) { tip.style.display = "none"; return; }
  tip.textContent = tipText(shown[+i]);
  tip.style.display = "block";
  var x = ev.clientX + 12, y = ev.clientY + 14;
  if (x + tip.offsetWidth > window.innerWidth) x = Math.max(0, ev.clientX - tip.offsetWidth - 8);
  if (y + tip.offsetHeight > window.innerHeight) y = Math.max(0, ev.clientY - tip.offsetHeight - 8);
  tip.style.left = x + "px";
  tip.style.top = y + "px";
});
chart.addEventListener("mouseleave", function () { tip.style.display = "none"; });
document.getElementById("reset").addEventListener("click", function () {
  focus = root;
  render();
});
search.addEventListener("input", function () { setSearch(search.value); });
document.addEventListener("keydown", function (ev) {
  if (ev.key === "Escape") { search.value = ""; focus = root; setSearch(""); }
});
select.addEventListener("change", function () { load(+select.value); });
D.profiles.forEach(function (p, i) {
  var opt = document.createElement("option");
  opt.value = i;
  opt.textContent = p.label + " (" + p.unit + ")";
  select.appendChild(opt);
});
select.style.display = D.profiles.length > 1 ? "" : "none";
function fromHash(key) {
  var m = new RegExp("[#&]" + key + "=([^&]*)").exec(location.hash);
  return m ? decodeURIComponent(m[1]) : "";
}
function findFrame(name) {
  var stack = [root];
  while (stack.length) {
    var n = stack.shift();
    if (n.name === name && n !== root) return n;
    stack.push.apply(stack, n.children);
  }
  return root;
}
if (D.profiles.length) {
  // A link can carry a view: page.html#zoom=FRAME&search=TEXT
  load(0);
  if (fromHash("zoom")) { focus = findFrame(fromHash("zoom")); }
  search.value = fromHash("search");
  setSearch(search.value);
} else {
  chart.textContent = "No stacks were recorded.";
}
window.addEventListener("resize", function () { if (prof) render(); });
})();
</script>
</body></html>
"""
