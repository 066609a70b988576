"""The offline interpreter of `ask`: a question in plain language -> one query tool call ->
one or two sentences with the exact figures of the rows it returned.

Deterministic and local: the question is split into words, an intent is read from keywords
(most, least, top, slowest, failed, when, why, compare) and entities from what the snapshot
holds (syscall, errno, function and process names, pids, ports, addresses, seconds).
Misspelt words are matched with difflib against those names and the keywords, so
"opneat" is openat and "slowst" is slowest. A question it cannot map is answered with
the list of questions it understands; it never guesses a figure.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from otlp_ebpf.analysis.query_tools import (
    Sources,
    ToolError,
    ToolResult,
    run_tool,
    section,
)
from otlp_ebpf.model import CpuSnapshot, MemSnapshot, NetSnapshot, Snapshot, SyscallsSnapshot

UNDERSTOOD = (
    "which syscall failed the most? / which syscall was called the most (or least)?",
    "which errors (errno) happened? how often did openat fail? how many ENOENT?",
    "which syscall was the slowest? (p99 latency)",
    "what is the hottest function? (self; 'including callees' for total) of pid N / process X",
    "where were threads blocked the most? (off-CPU)",
    "which process used the most CPU (syscalls, bytes, memory)?",
    "which connection moved the most bytes? which had retransmits / resets? port N, address A",
    "how many packets were dropped, and why?",
    "where is memory outstanding (leaking)?",
    "what changed between 3 and 6 s? what was slow at second 4? (recordings)",
    "why did latency rise? what went wrong? (the findings of analyze)",
    "which function got slower between these two runs? (two snapshots)",
)

# Keywords per intent (and per domain), matched on whole words or, when misspelt, by difflib.
INTENT_WORDS: dict[str, tuple[str, ...]] = {
    "compare": (
        "compare",
        "regressed",
        "regression",
        "regress",
        "slower",
        "faster",
        "diff",
        "grew",
        "got",
        "increased",
        "decreased",
    ),
    "why": ("why", "cause", "caused", "reason", "wrong", "explain", "root", "problem"),
    "when": ("when", "second", "seconds", "between", "during", "changed", "time"),
    "failed": (
        "failed",
        "fail",
        "fails",
        "failing",
        "failure",
        "failures",
        "error",
        "errors",
        "errno",
        "errnos",
    ),
    "slowest": ("slowest", "slow", "latency", "latencies", "longest", "p99", "laggiest"),
    "least": ("least", "fewest", "rarest", "lowest", "smallest", "coldest"),
    "most": (
        "most",
        "top",
        "busiest",
        "hottest",
        "hot",
        "biggest",
        "largest",
        "highest",
        "heaviest",
        "main",
        "much",
        "many",
        "count",
        "often",
    ),
}
DOMAIN_WORDS: dict[str, tuple[str, ...]] = {
    "offcpu": ("blocked", "block", "offcpu", "waiting", "wait", "sleeping", "sleep"),
    "drops": ("drop", "drops", "dropped", "packets", "packet"),
    "memory": (
        "memory",
        "leak",
        "leaking",
        "leaks",
        "allocation",
        "allocations",
        "allocated",
        "outstanding",
        "malloc",
        "heap",
    ),
    "connection": (
        "connection",
        "connections",
        "port",
        "peer",
        "traffic",
        "bytes",
        "retransmits",
        "retransmit",
        "retransmitted",
        "retransmissions",
        "resets",
        "reset",
        "network",
        "tcp",
        "socket",
        "rtt",
        "address",
    ),
    "process": ("process", "processes", "pid", "program", "task"),
    "function": (
        "function",
        "functions",
        "cpu",
        "symbol",
        "code",
        "frame",
        "method",
        "callees",
        "including",
        "inclusive",
        "total",
    ),
    "syscall": ("syscall", "syscalls", "call", "calls", "system"),
}
_ALL_KEYWORDS = sorted({w for ws in (*INTENT_WORDS.values(), *DOMAIN_WORDS.values()) for w in ws})
# Words a question is made of that must never be fuzzy-matched to a name in the snapshot.
_GLUE_WORDS = (
    "a an the what which who how is was were did does do of in on at to by for from and or "
    "me my it its this these those that than with run runs two one snapshot recording used "
    "use using made make making had has have been be are per any all s sec there their "
    "they show tell give list"
)
_GLUE = frozenset(_GLUE_WORDS.split())
_CUTOFF = 0.8
_IPV4 = re.compile(r"\b(\d{1,3}(?:\.\d{1,3}){3})\b")
_IPV6 = re.compile(r"\[([0-9a-fA-F:]+)\]|\b([0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7})\b")
_ERRNO = re.compile(r"\bE[A-Z0-9]{2,}\b")


@dataclass(frozen=True)
class Entities:
    syscall: str | None = None
    errno: str | None = None
    function: str | None = None
    process: str | None = None
    pid: int | None = None
    port: int | None = None
    address: str | None = None
    seconds: tuple[float, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What the question was understood as: an intent, a domain, and the one tool call."""

    intent: str
    domain: str
    tool: str
    arguments: dict[str, Any]
    entities: Entities


@dataclass(frozen=True)
class OfflineAnswer:
    question: str
    understood: bool
    text: str
    plan: Plan | None = None
    result: ToolResult | None = None
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": "offline",
            "question": self.question,
            "understood": self.understood,
            "answer": self.text,
        }
        if self.plan is not None:
            out["intent"] = self.plan.intent
            out["tool"] = self.plan.tool
            out["arguments"] = self.plan.arguments
            out["entities"] = {
                k: v for k, v in vars(self.plan.entities).items() if v not in (None, ())
            }
        if self.result is not None:
            out["result"] = self.result.to_dict()
        if not self.understood:
            out["understood_questions"] = list(UNDERSTOOD)
        return out


# ---------------------------------------------------------------- reading the question


def words_of(question: str) -> list[str]:
    return re.findall(
        r"[a-z_][a-z0-9_]*|\d+(?:\.\d+)?", question.lower().replace("off-cpu", "offcpu")
    )


def _keyword(word: str) -> str | None:
    """The keyword a word is (or is a misspelling of)."""
    if word in _GLUE or word.isdigit():
        return None
    if word in _ALL_KEYWORDS:
        return word
    if len(word) < 4:
        return None
    close = difflib.get_close_matches(word, _ALL_KEYWORDS, n=1, cutoff=_CUTOFF)
    return close[0] if close else None


def _groups_hit(keywords: list[str], table: Mapping[str, tuple[str, ...]]) -> list[str]:
    """The groups the keywords belong to, in the order the question names them."""
    hit: list[str] = []
    for word in keywords:
        hit += [name for name, ws in table.items() if word in ws and name not in hit]
    return hit


@dataclass(frozen=True)
class Vocabulary:
    """The names a question can refer to, read from the snapshots."""

    syscalls: frozenset[str]
    errnos: frozenset[str]
    functions: frozenset[str]
    processes: frozenset[str]


def vocabulary(snapshots: Iterable[Snapshot]) -> Vocabulary:
    syscalls: set[str] = set()
    errnos: set[str] = set()
    functions: set[str] = set()
    processes: set[str] = set()
    for snapshot in snapshots:
        processes.update(p.comm for p in snapshot.processes)
        if isinstance(sc := section(snapshot, "syscalls"), SyscallsSnapshot):
            for stat in sc.syscalls:
                syscalls.add(stat.name)
                errnos.update(stat.errno)
                processes.add(stat.comm)
        if isinstance(cpu := section(snapshot, "cpu"), CpuSnapshot):
            for stack in (*cpu.stacks, *cpu.off_cpu):
                functions.update(stack.frames)
                processes.add(stack.comm)
        if isinstance(mem := section(snapshot, "mem"), MemSnapshot):
            for alloc in mem.outstanding:
                functions.update(alloc.frames)
        if isinstance(net := section(snapshot, "net"), NetSnapshot):
            processes.update(c.comm for c in net.connections)
    processes.discard("")
    return Vocabulary(
        frozenset(syscalls), frozenset(errnos), frozenset(functions), frozenset(processes)
    )


def _name_in(word: str, names: frozenset[str], *, fuzzy: bool = True) -> str | None:
    if word in names:
        return word
    lowered = {n.lower(): n for n in names}
    if word in lowered:
        return lowered[word]
    if not fuzzy or len(word) < 4:
        return None
    close = difflib.get_close_matches(word, list(lowered), n=1, cutoff=_CUTOFF)
    return lowered[close[0]] if close else None


def entities_of(question: str, vocab: Vocabulary) -> Entities:
    """Names and numbers the question mentions, matched against the snapshot."""
    lowered = question.lower()
    found: dict[str, Any] = {}
    errno = _ERRNO.search(question) or _ERRNO.search(question.upper())
    for word in words_of(question):
        if word in _GLUE or word.isdigit() or _keyword(word) == word:
            continue
        if "errno" not in found and (name := _name_in(word.upper(), vocab.errnos, fuzzy=False)):
            found["errno"] = name
            continue
        for kind, names in (
            ("syscall", vocab.syscalls),
            ("function", vocab.functions),
            ("process", vocab.processes),
        ):
            if kind not in found and (name := _name_in(word, names)):
                found[kind] = name
                break
    if "errno" not in found and errno and errno.group(0) in vocab.errnos:
        found["errno"] = errno.group(0)
    if m := re.search(r"\b(?:pid|process)\s*#?\s*(\d+)\b", lowered):
        found["pid"] = int(m.group(1))
    if m := re.search(r"\bport\s*(\d{1,5})\b|:(\d{1,5})\b", lowered):
        found["port"] = int(m.group(1) or m.group(2))
    if m := _IPV4.search(question):
        found["address"] = m.group(1)
    elif (m := _IPV6.search(question)) and ("::" in m.group(0) or m.group(1)):
        found["address"] = m.group(1) or m.group(2)
    seconds = _seconds_of(lowered)
    if seconds:
        found["seconds"] = seconds
    return Entities(**found)


def _seconds_of(lowered: str) -> tuple[float, ...]:
    number = r"(\d+(?:\.\d+)?)"
    unit = r"\s*(?:s|sec|secs|seconds?)\b"
    span = re.search(rf"(?:between|from)\s+{number}(?:{unit})?\s+(?:and|to|-)\s+{number}", lowered)
    if span is None:
        span = re.search(rf"\b{number}\s*(?:-|to)\s*{number}{unit}", lowered)
    if span:
        return (float(span.group(1)), float(span.group(2)))
    if at := re.search(
        rf"(?:second|sec)\s+{number}\b|\b{number}{unit}|\bt\s*=\s*{number}", lowered
    ):
        value = next(g for g in at.groups() if g is not None)
        return (float(value),)
    return ()


# ---------------------------------------------------------------- planning


def plan_question(question: str, sources: Sources) -> Plan | None:
    """The tool call that answers the question, or None when it cannot be mapped."""
    snapshots = [s for s in (sources.first, sources.second) if s is not None]
    vocab = vocabulary(snapshots)
    ents = entities_of(question, vocab)
    ordered = [k for w in words_of(question) if (k := _keyword(w))]
    keywords = set(ordered)
    intents = _groups_hit(ordered, INTENT_WORDS)
    domains = _groups_hit(ordered, DOMAIN_WORDS)
    intent = _intent(intents, keywords, ents, sources)
    if intent is None and domains:
        intent = "most"  # "resets?" "memory leaks": the top rows of what was named
    domain = _domain(domains, ents, sources.first, intent)
    if intent is None or domain is None:
        return None
    call = _call(intent, domain, ents, keywords, sources)
    if call is None:
        return None
    tool, args = call
    return Plan(intent, domain, tool, args, ents)


def _intent(intents: list[str], keywords: set[str], ents: Entities, sources: Sources) -> str | None:
    if sources.second is not None and ("compare" in intents or "slowest" in intents):
        return "compare"
    for intent in ("why", "when", "failed", "slowest", "least", "most"):
        # "time" and "between" say "when" only with seconds to go with them.
        if intent == "when" and not ents.seconds and "when" not in keywords:
            continue
        if intent in intents:
            return intent
    if ents.seconds:
        return "when"
    said = [i for i in intents if i != "when" or "when" in keywords]
    if sources.second is not None or said == ["compare"]:
        return "compare"  # with one snapshot, the tool says it needs two
    if ents.errno or ents.syscall or ents.function or ents.pid or ents.port or ents.address:
        return "most"  # "openat?" "tell me about port 8080": that entity's own row
    return None


def _domain(domains: list[str], ents: Entities, first: Snapshot, intent: str | None) -> str | None:
    if intent in ("why", "when", "compare"):
        return domains[0] if domains else "any"
    if ents.errno:
        return "syscall"
    for name in ("offcpu", "drops", "memory"):
        if name in domains:
            return name
    if ents.port or ents.address:
        return "connection"
    if intent == "failed" and "process" not in domains:
        return "syscall"
    if _subject_is_process(domains) and not (ents.syscall or ents.function):
        return "process"
    if ents.syscall and "function" not in domains:
        return "syscall"
    if ents.function:
        return "function"
    for name in ("connection", "function", "syscall"):
        if name in domains:
            return name
    if intent == "slowest":
        return "syscall" if section(first, "syscalls") is not None else "connection"
    return _default_domain(first)


def _subject_is_process(domains: list[str]) -> bool:
    """ "which process used the most cpu" asks for a process; "hottest function of pid 7" for
    a function: whichever the question names first is what it asks for."""
    if "process" not in domains:
        return False
    return "function" not in domains or domains.index("process") < domains.index("function")


def _default_domain(first: Snapshot) -> str | None:
    """A single-signal snapshot answers questions about its own signal."""
    return {"cpu": "function", "syscalls": "syscall", "net": "connection", "mem": "memory"}.get(
        first.kind
    )


def _order(intent: str) -> str:
    return "asc" if intent == "least" else "desc"


def _call(
    intent: str, domain: str, ents: Entities, keywords: set[str], sources: Sources
) -> tuple[str, dict[str, Any]] | None:
    if intent == "why":
        return "findings", {}
    if intent == "compare":
        return _compare_call(domain, keywords, sources)
    if intent == "when":
        return _window_call(domain, ents, keywords)
    if domain == "syscall":
        return _syscall_call(intent, ents, keywords)
    if domain in ("function", "offcpu"):
        args: dict[str, Any] = {"metric": "total" if _total_asked(keywords) else "self"}
        if domain == "offcpu":
            args["profile"] = "off_cpu"
        if intent == "least":
            args["order"] = "asc"
        if ents.pid is not None:
            args["pid"] = ents.pid
        elif ents.process:
            args["process"] = ents.process
        if ents.function:
            args["limit"] = 50
        return "top_functions", args
    if domain == "process":
        by = "syscall_errors" if intent == "failed" else _process_metric(keywords, sources.first)
        return "top_processes", {"by": by, "order": _order(intent)}
    if domain == "connection":
        return "top_connections", _connection_args(intent, ents, keywords)
    if domain == "drops":
        return "net_drops", {}
    if domain == "memory":
        return "memory_outstanding", {"pid": ents.pid} if ents.pid is not None else {}
    return None


def _total_asked(keywords: set[str]) -> bool:
    return bool(keywords & {"including", "total", "inclusive"})


def _syscall_call(intent: str, ents: Entities, keywords: set[str]) -> tuple[str, dict[str, Any]]:
    args: dict[str, Any] = {}
    if ents.pid is not None:
        args["pid"] = ents.pid
    if intent == "failed" and (ents.errno or "errno" in keywords or "errnos" in keywords):
        if ents.errno:
            args["errno"] = ents.errno
        if ents.syscall:
            args["syscall"] = ents.syscall
        return "syscall_errors", args
    if intent == "failed" and ents.syscall:
        return "syscall_errors", args | {"syscall": ents.syscall}
    if ents.errno:
        return "syscall_errors", args | {"errno": ents.errno}
    by = {"failed": "errors", "slowest": "p99_ns"}.get(intent, "calls")
    args |= {"by": by, "order": _order(intent)}
    if ents.syscall:
        args["syscall"] = ents.syscall
    return "top_syscalls", args


def _process_metric(keywords: set[str], first: Snapshot) -> str:
    if keywords & {"memory", "leak", "leaking", "allocated", "outstanding", "heap"}:
        return "outstanding_bytes"
    if keywords & {"bytes", "traffic", "network"}:
        return "bytes"
    if keywords & {"syscall", "syscalls", "calls"}:
        return "syscalls"
    if keywords & {"cpu"} or section(first, "cpu") is not None:
        return "cpu_samples"
    return "syscalls" if section(first, "syscalls") is not None else "bytes"


def _connection_args(intent: str, ents: Entities, keywords: set[str]) -> dict[str, Any]:
    by = "bytes"
    if keywords & {"retransmits", "retransmit", "retransmitted", "retransmissions"}:
        by = "retransmits"
    elif keywords & {"resets", "reset"}:
        by = "resets"
    elif intent == "slowest" or "rtt" in keywords:
        by = "srtt_us"
    args: dict[str, Any] = {"by": by, "order": _order(intent)}
    if ents.port is not None:
        args["port"] = ents.port
    if ents.address:
        args["address"] = ents.address
    if ents.pid is not None:
        args["pid"] = ents.pid
    return args


def _window_call(
    domain: str, ents: Entities, keywords: set[str]
) -> tuple[str, dict[str, Any]] | None:
    if not ents.seconds:
        return "findings", {}  # "when did it go wrong?": the findings carry their windows
    if len(ents.seconds) == 2:
        start, end = sorted(ents.seconds)
    else:
        # "at second 4": the second that ends at 4 s (t_s is the end of a row).
        end = ents.seconds[0]
        start = max(0.0, end - 1.0)
        if end == start:
            end = 1.0
    args: dict[str, Any] = {"start_s": start, "end_s": end}
    signal = {
        "syscall": "syscalls",
        "function": "cpu",
        "process": "cpu",
        "connection": "net",
        "memory": "mem",
        "drops": "net",
    }.get(domain)
    if keywords & {"slow", "slowest", "latency", "latencies", "p99", "longest"}:
        args |= {"signal": "syscalls", "measure": "p99_ns"}
    elif keywords & {"failed", "fail", "fails", "error", "errors", "failures", "failing"}:
        args |= {"signal": "syscalls", "measure": "errors"}
    elif signal is not None:
        args["signal"] = signal
    return "timeline_window", args


def _compare_call(
    domain: str, keywords: set[str], sources: Sources
) -> tuple[str, dict[str, Any]] | None:
    args: dict[str, Any] = {}
    signal = {
        "syscall": "syscalls",
        "function": "cpu",
        "connection": "net",
        "memory": "mem",
        "offcpu": "cpu",
    }.get(domain)
    if signal is not None:
        args["signal"] = signal
    if keywords & {"slower", "slow", "latency", "p99"} and signal == "syscalls":
        args["metric"] = "p99"
    elif keywords & {"failed", "errors", "error"}:
        args |= {"signal": "syscalls", "metric": "errors"}
    elif _total_asked(keywords):
        args["metric"] = "total"
    elif signal == "cpu":
        args["metric"] = "self"
    if keywords & {"faster", "decreased"}:
        args["direction"] = "shrank"
    return "compare_runs", args


# ---------------------------------------------------------------- answering


def ask_offline(question: str, sources: Sources) -> OfflineAnswer:
    """Answer with the exact figures of one tool call, or say honestly what is understood."""
    plan = plan_question(question, sources)
    if plan is None:
        return OfflineAnswer(question, False, cannot_answer())
    try:
        result = run_tool(sources, plan.tool, plan.arguments)
    except ToolError as exc:
        return OfflineAnswer(question, False, f"Cannot answer: {exc}.", plan, problems=[str(exc)])
    return OfflineAnswer(question, True, sentence(plan, result), plan, result)


def cannot_answer() -> str:
    lines = ["Cannot answer this question offline. Questions understood:"]
    lines += [f"  - {q}" for q in UNDERSTOOD]
    return "\n".join(lines)


def n(value: Any) -> str:
    """A figure as shown in answers: integers with thousands separators, others as given."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:,}"
    return str(value)


def duration_ns(value: int) -> str:
    return f"{n(value)} ns"


def sentence(plan: Plan, result: ToolResult) -> str:
    rows = result.rows
    if not rows:
        return f"No rows: {'; '.join(result.notes) or 'nothing matched'} ({result.title})."
    writer = _WRITERS.get(plan.tool)
    assert writer is not None
    return writer(plan, rows, result)


def _pick(rows: list[dict[str, Any]], column: str, value: Any) -> dict[str, Any]:
    return next((r for r in rows if r.get(column) == value), rows[0])


def _syscalls_sentence(plan: Plan, rows: list[dict[str, Any]], result: ToolResult) -> str:
    top = rows[0]
    by = plan.arguments.get("by", "calls")
    name = f"`{top['syscall']}`"
    if plan.entities.syscall:
        return (
            f"{name} was called {n(top['calls'])} times and failed {n(top['errors'])} times "
            f"({n(top['error_pct'])}%); p50 {duration_ns(top['p50_ns'])}, "
            f"p99 {duration_ns(top['p99_ns'])}, max {duration_ns(top['max_ns'])}."
        )
    most = "least" if plan.arguments.get("order") == "asc" else "most"
    if by == "errors":
        return (
            f"{name} failed the {most}: {n(top['errors'])} of {n(top['calls'])} calls "
            f"({n(top['error_pct'])}%)."
        )
    if by == "p99_ns":
        word = "fastest" if most == "least" else "slowest"
        return (
            f"{name} was the {word} by p99 latency: p99 {duration_ns(top['p99_ns'])} "
            f"(p50 {duration_ns(top['p50_ns'])}, max {duration_ns(top['max_ns'])}) over "
            f"{n(top['calls'])} calls."
        )
    return f"{name} was called the {most}: {n(top['calls'])} calls, {n(top['errors'])} failed."


def _errors_sentence(plan: Plan, rows: list[dict[str, Any]], result: ToolResult) -> str:
    total = sum(r["errors"] for r in rows)
    top = rows[0]
    if plan.arguments.get("errno"):
        where = ", ".join(f"{r['syscall']} {n(r['errors'])}" for r in rows[:3])
        return f"{top['errno']} was returned {n(total)} times ({where})."
    if plan.arguments.get("syscall"):
        parts = ", ".join(f"{r['errno']} {n(r['errors'])}" for r in rows[:3])
        return f"`{top['syscall']}` failed {n(total)} times: {parts}."
    return (
        f"The most frequent error is {top['errno']} from `{top['syscall']}`: "
        f"{n(top['errors'])} times ({n(total)} failed calls in the rows shown)."
    )


def _functions_sentence(plan: Plan, rows: list[dict[str, Any]], result: ToolResult) -> str:
    weight = "blocked_ns" if plan.arguments.get("profile") == "off_cpu" else "samples"
    top = _pick(rows, "function", plan.entities.function) if plan.entities.function else rows[0]
    unit = "ns blocked" if weight == "blocked_ns" else "samples"
    kind = "including its callees" if plan.arguments.get("metric") == "total" else "self"
    if plan.entities.function:
        share = f"{n(top['share_pct'])}%"
        return f"`{top['function']}`: {n(top[weight])} {unit} ({share}, {kind})."
    most = "least" if plan.arguments.get("order") == "asc" else "most"
    what = "was blocked the" if weight == "blocked_ns" else "took the"
    tail = f"{most} time" if weight == "blocked_ns" else f"{most} CPU"
    return (
        f"`{top['function']}` {what} {tail}: {n(top[weight])} {unit} "
        f"({n(top['share_pct'])}% {kind})."
    )


def _processes_sentence(plan: Plan, rows: list[dict[str, Any]], result: ToolResult) -> str:
    top = rows[0]
    by = plan.arguments["by"]
    most = "least" if plan.arguments.get("order") == "asc" else "most"
    label = by.replace("_", " ")
    return f"{top['process']} (pid {top['pid']}) had the {most} {label}: {n(top[by])}."


def _connections_sentence(plan: Plan, rows: list[dict[str, Any]], result: ToolResult) -> str:
    top = rows[0]
    by = plan.arguments["by"]
    head = f"{top['connection']}"
    if by == "bytes":
        return (
            f"{head} moved the most bytes: {n(top['bytes'])} ({n(top['tx_bytes'])} sent, "
            f"{n(top['rx_bytes'])} received)."
        )
    if by == "srtt_us":
        return f"{head} had the highest smoothed RTT: {n(top['srtt_us'])} us."
    return f"{head} had the most {by}: {n(top[by])} ({result.notes[0]})."


def _drops_sentence(plan: Plan, rows: list[dict[str, Any]], result: ToolResult) -> str:
    total = sum(r["drops"] for r in rows)
    top = rows[0]
    return f"{n(total)} packets were dropped; the most for {top['reason']}: {n(top['drops'])}."


def _memory_sentence(plan: Plan, rows: list[dict[str, Any]], result: ToolResult) -> str:
    top = rows[0]
    return (
        f"The most outstanding memory was allocated at {top['stack']}: {n(top['bytes'])} bytes "
        f"in {n(top['allocations'])} allocations ({n(top['share_pct'])}%); {result.notes[0]}."
    )


def _window_sentence(plan: Plan, rows: list[dict[str, Any]], result: ToolResult) -> str:
    top = rows[0]
    span = result.title.split(" (")[0].replace("what changed ", "")
    rest = f"{n(top['rest'])} {top['unit']} over the rest of the run"
    if plan.arguments.get("measure") == "p99_ns":
        return (
            f"Slowest {span}: {top['series']} reached {n(top['window'])} ns (p99), against {rest}."
        )
    total = f", {n(top['window_total'])} in all" if top["window_total"] is not None else ""
    return (
        f"The largest change {span}: {top['series']} at {n(top['window'])} {top['unit']} "
        f"against {rest}{total}."
    )


def _findings_sentence(plan: Plan, rows: list[dict[str, Any]], result: ToolResult) -> str:
    top = rows[0]
    more = f" ({len(rows) - 1} more findings below)" if len(rows) > 1 else ""
    window = f"{n(top['start_s'])}-{n(top['end_s'])} s"
    return f"Finding 1 ({top['kind']}, {window}): {top['summary']}{more}"


def _compare_sentence(plan: Plan, rows: list[dict[str, Any]], result: ToolResult) -> str:
    top = rows[0]
    word = "shrank" if top["delta"] < 0 else "grew"
    sure = "beyond noise" if top["beyond_noise"] else "within noise"
    return (
        f"`{top['key']}` {word} the most ({top['section']}): {n(top['before'])} -> "
        f"{n(top['after'])} {top['unit']} ({n(top['delta'])} {top['delta_unit']}, {sure})."
    )


_WRITERS = {
    "top_syscalls": _syscalls_sentence,
    "syscall_errors": _errors_sentence,
    "top_functions": _functions_sentence,
    "top_processes": _processes_sentence,
    "top_connections": _connections_sentence,
    "net_drops": _drops_sentence,
    "memory_outstanding": _memory_sentence,
    "timeline_window": _window_sentence,
    "findings": _findings_sentence,
    "compare_runs": _compare_sentence,
}
