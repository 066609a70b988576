"""`otlp-ebpf ask`: a question in plain language about snapshots, answered from their rows,
offline by default or through an OpenAI-compatible LLM that may only use the query tools."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from otlp_ebpf import console
from otlp_ebpf.cli import common
from otlp_ebpf.errors import EXIT_RUNTIME, UsageError

if TYPE_CHECKING:
    from otlp_ebpf.analysis.ask_offline import OfflineAnswer
    from otlp_ebpf.analysis.query_tools import Sources

HELP = """Ask a question about a snapshot in plain language: "which syscall failed the most?",
"what was slow at second 4?", "why did latency rise?", or with two snapshots "which function
got slower?". The answer quotes the exact rows it comes from.

Offline by default: a deterministic interpreter, no network. With an LLM (--llm URL, or
OTLP_EBPF_LLM_URL, or OPENAI_BASE_URL; --model or OTLP_EBPF_LLM_MODEL; key from
OPENAI_API_KEY) the model is offered the same query tools and sees only their results; every
number of its answer is checked against them and the ones no result holds are flagged.
"""

SYSTEM_PROMPT = """You answer questions about a profiling snapshot taken by otlp-ebpf \
(eBPF: CPU stacks, syscalls, TCP connections, memory, and for recordings a timeline).
You cannot see the snapshot: call the tools to get rows of exact figures, then answer in one \
to three sentences. Every number you write must be copied from a tool result exactly as it \
appears there; do not compute, round or convert numbers, and never guess one. If the tools \
cannot answer the question, say so. The snapshots: {snapshots}."""

DEFAULT_STEPS = 8
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3


@dataclass(frozen=True)
class AskConfig:
    question: str
    paths: tuple[str, ...]
    json: bool
    llm_url: str | None
    model: str | None
    api_key: str | None
    max_steps: int = DEFAULT_STEPS
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES


def register(app: typer.Typer) -> None:
    """Add the `ask` command to the app."""
    app.command("ask", help=HELP)(ask_command)


def _steps_rule(value: int) -> int:
    if not 1 <= value <= 50:
        raise UsageError(f"--max-steps must be from 1 to 50, got {value}")
    return value


def _retries_rule(value: int) -> int:
    if not 0 <= value <= 10:
        raise UsageError(f"--retries must be from 0 to 10, got {value}")
    return value


def _timeout_rule(value: float) -> float:
    common.check_number(value, "--timeout", minimum=0.001, what="seconds above 0")
    return value


def ask_command(
    question: Annotated[str, typer.Argument(metavar="QUESTION", help="The question, quoted.")],
    path: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="A snapshot (JSON) of any kind.")],
    second: Annotated[
        str | None,
        typer.Argument(metavar="[SNAPSHOT2]", help="A second snapshot, to compare with the first."),
    ] = None,
    llm: Annotated[
        str | None,
        typer.Option(
            "--llm",
            metavar="URL",
            help="OpenAI-compatible endpoint (http://localhost:11434/v1). Env: "
            "OTLP_EBPF_LLM_URL, then OPENAI_BASE_URL. Without one: offline.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", metavar="NAME", help="Model name. Env: OTLP_EBPF_LLM_MODEL."),
    ] = None,
    max_steps: Annotated[
        int,
        typer.Option(
            "--max-steps", metavar="N", callback=_steps_rule, help="Model turns at most (1-50)."
        ),
    ] = DEFAULT_STEPS,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", metavar="SEC", callback=_timeout_rule, help="Per request to the LLM."
        ),
    ] = DEFAULT_TIMEOUT_S,
    retries: Annotated[
        int,
        typer.Option(
            "--retries",
            metavar="N",
            callback=_retries_rule,
            help="Retries after a timeout, a refused connection, 429 or 5xx (0-10), with "
            "exponential backoff from 1 s; a Retry-After is honoured up to 30 s.",
        ),
    ] = DEFAULT_RETRIES,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print JSON on stdout: the answer, rows, and the whole exchange."
        ),
    ] = False,
) -> None:
    config = AskConfig(
        question=question,
        paths=(path,) if second is None else (path, second),
        json=as_json,
        llm_url=llm
        or os.environ.get("OTLP_EBPF_LLM_URL")
        or os.environ.get("OPENAI_BASE_URL")
        or None,
        model=model or os.environ.get("OTLP_EBPF_LLM_MODEL") or None,
        api_key=os.environ.get("OPENAI_API_KEY") or None,
        max_steps=max_steps,
        timeout_s=timeout,
        retries=retries,
    )
    check_config(config)
    code = run_ask(config)
    if code:
        raise typer.Exit(code)


def check_config(config: AskConfig) -> None:
    if not config.question.strip():
        raise UsageError("QUESTION is empty")
    if len(config.question) > 2000:
        raise UsageError("QUESTION is longer than 2000 characters")
    if config.llm_url is None:
        return
    if not config.llm_url.lower().startswith(("http://", "https://")):
        raise UsageError(
            f"--llm {common_mask(config)}: expected an http:// or https:// URL "
            "(e.g. http://localhost:11434/v1)"
        )
    if not config.model:
        raise UsageError(
            "LLM mode needs a model name: --model NAME or OTLP_EBPF_LLM_MODEL "
            "(e.g. llama3.1 for Ollama)"
        )


def common_mask(config: AskConfig) -> str:
    from otlp_ebpf.redact import MASK, mask_userinfo

    text = mask_userinfo(config.llm_url or "")
    return text.replace(config.api_key, MASK) if config.api_key else text


def load_sources(config: AskConfig) -> Sources:
    from otlp_ebpf.analysis.query_tools import Sources
    from otlp_ebpf.model import read_snapshot

    snapshots = [read_snapshot(p) for p in config.paths]
    return Sources(snapshots[0], snapshots[1] if len(snapshots) > 1 else None, config.paths)


def run_ask(config: AskConfig) -> int:
    """Answer, print, and return the exit code (1 when the LLM failed)."""
    from otlp_ebpf.analysis.ask_offline import ask_offline

    sources = load_sources(config)
    offline = ask_offline(config.question, sources)
    if config.llm_url is None:
        print_offline(offline, config)
        return 0
    return run_llm(config, sources, offline)


def print_offline(offline: OfflineAnswer, config: AskConfig) -> None:
    from otlp_ebpf.formatters.ask_text import render_offline

    if config.json:
        _print_json(offline.to_dict())
    else:
        render_offline(offline.to_dict(), console.out)


def _print_json(document: dict[str, Any]) -> None:
    console.out.file.write(json.dumps(document, indent=1) + "\n")


def describe(sources: Sources) -> str:
    """What the model is told about the snapshots: their kinds and signals, nothing else."""
    from otlp_ebpf.analysis.query_tools import section

    parts = []
    for label, snap in (("first", sources.first), ("second", sources.second)):
        if snap is None:
            continue
        signals = [k for k in ("cpu", "syscalls", "net", "mem") if section(snap, k) is not None]
        parts.append(f"{label}: a {snap.kind} snapshot with {', '.join(signals) or 'no'} data")
    return "; ".join(parts)


def run_llm(config: AskConfig, sources: Sources, offline: OfflineAnswer) -> int:
    from otlp_ebpf.analysis.grounding import ungrounded
    from otlp_ebpf.analysis.query_tools import ToolError, run_tool, tool_schemas
    from otlp_ebpf.formatters.ask_text import render_llm
    from otlp_ebpf.llm import LlmError, LlmSettings, converse

    assert config.llm_url is not None and config.model is not None
    settings = LlmSettings(
        config.llm_url,
        config.model,
        config.api_key,
        timeout_s=config.timeout_s,
        retries=config.retries,
        max_steps=config.max_steps,
    )
    results: list[Any] = []

    def call_tool(name: str, arguments: Any) -> tuple[bool, Any]:
        try:
            result = run_tool(sources, name, arguments).to_dict()
        except ToolError as exc:
            return False, {"error": str(exc)}
        # The model chose the arguments: a number it passed in (limit=31) proves nothing.
        results.append({k: v for k, v in result.items() if k != "arguments"})
        return True, result

    messages = [
        {"role": "system", "content": SYSTEM_PROMPT.format(snapshots=describe(sources))},
        {"role": "user", "content": config.question},
    ]
    console.debug(f"ask: {settings.masked(settings.endpoint)} model {config.model}")
    try:
        exchange = converse(
            settings,
            messages,
            tool_schemas(),
            call_tool,
            log=lambda m: console.debug(settings.masked(m)),
        )
    except LlmError as exc:
        message = settings.masked(exc.message)
        console.error(f"LLM failed: {message}; the offline answer follows")
        if config.json:
            _print_json({"mode": "llm", "error": message, "offline": offline.to_dict()})
        else:
            print_offline(offline, config)
        return EXIT_RUNTIME
    flagged = [c.to_dict() for c in ungrounded(exchange.answer, [config.question, *results])]
    calls = [c.to_dict() for c in exchange.calls]
    if config.json:
        _print_json(
            {
                "mode": "llm",
                "endpoint": settings.masked(settings.endpoint),
                "model": config.model,
                "question": config.question,
                "answer": exchange.answer,
                "grounded": not flagged,
                "ungrounded": flagged,
                "tool_calls": calls,
                "steps": exchange.steps,
                "requests": exchange.requests,
                "exchange": exchange.messages,
            }
        )
    else:
        render_llm(exchange.answer, calls, flagged, console.out)
    return 0
