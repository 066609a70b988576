"""A client for OpenAI-compatible chat completions with tool calling (Ollama, llama.cpp
server, vLLM and hosted services speak it), for `ask`.

It knows nothing of snapshots: it offers the tool schemas it is given, hands each call the
model asks for to `run_tool`, sends back what that returned, and loops until the model
answers in text or the step limit is reached. Requests time out; 429 and 5xx answers,
timeouts and refused connections are retried with exponential backoff (a Retry-After is
honoured, bounded). The API key goes into the Authorization header and nowhere else: every
message this module produces passes through `_masked` first.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from otlp_ebpf.errors import RuntimeFailure
from otlp_ebpf.redact import MASK, mask_userinfo

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
LONGEST_WAIT_S = 30.0  # a Retry-After beyond this is cut to it: a CLI must not hang
SNIPPET = 200  # characters of a failing answer's body shown in the error line
_sleep = time.sleep  # between retries (tests record the waits instead)


class LlmError(RuntimeFailure):
    """The endpoint failed, or answered something that is not a usable chat completion."""


@dataclass(frozen=True)
class LlmSettings:
    url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0
    retries: int = 3
    max_steps: int = 8
    backoff_s: float = 1.0
    longest_wait_s: float = LONGEST_WAIT_S

    @property
    def endpoint(self) -> str:
        """The chat-completions URL from a base URL (`http://host:11434/v1`) or a full one."""
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"

    def masked(self, text: str) -> str:
        return _masked(text, self.api_key)


def _masked(text: str, key: str | None) -> str:
    text = mask_userinfo(text)
    return text.replace(key, MASK) if key else text


@dataclass
class ToolCall:
    """One call the model asked for and what it got back."""

    step: int
    name: str
    arguments: Any
    ok: bool
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"step": self.step, "name": self.name, "arguments": self.arguments, "ok": self.ok}
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class Exchange:
    """The whole conversation: every message sent and received, the calls, the answer."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    answer: str = ""
    steps: int = 0
    requests: int = 0


# run_tool(name, arguments) -> (ok, JSON-able content sent back to the model)
ToolRunner = Callable[[str, Any], tuple[bool, Any]]


def converse(
    settings: LlmSettings,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    run_tool: ToolRunner,
    *,
    log: Callable[[str], None] = lambda _: None,
    sleep: Callable[[float], None] | None = None,
    client: httpx.Client | None = None,
) -> Exchange:
    """Run the tool-calling loop; LlmError when the endpoint fails or talks nonsense."""
    exchange = Exchange(messages=list(messages))
    own = client is None
    http = client or httpx.Client(timeout=settings.timeout_s, follow_redirects=False)
    try:
        for step in range(1, settings.max_steps + 1):
            exchange.steps = step
            body = {
                "model": settings.model,
                "messages": exchange.messages,
                "tools": tools,
                "tool_choice": "auto",
                "temperature": 0,
            }
            reply = _message_of(_post(http, settings, body, exchange, log, sleep or _sleep))
            calls = reply.get("tool_calls") or []
            if not calls:
                text = reply.get("content")
                if not isinstance(text, str) or not text.strip():
                    raise LlmError(
                        "the model answered with neither text nor a tool call",
                    )
                exchange.messages.append({"role": "assistant", "content": text})
                exchange.answer = text.strip()
                return exchange
            if not isinstance(calls, list):
                raise LlmError("the endpoint sent tool_calls that are not a list")
            exchange.messages.append(
                {"role": "assistant", "content": reply.get("content") or "", "tool_calls": calls}
            )
            for index, call in enumerate(calls):
                exchange.messages.append(_answer_call(call, index, step, run_tool, exchange, log))
        raise LlmError(
            f"no final answer after {settings.max_steps} steps (the model kept calling tools)"
        )
    finally:
        if own:
            http.close()


def _answer_call(
    call: Any, index: int, step: int, run_tool: ToolRunner, exchange: Exchange,
    log: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """The tool message answering one call; a malformed call is answered with an error the
    model can act on, as long as it has a shape to answer at all."""
    if not isinstance(call, Mapping) or not isinstance(call.get("function"), Mapping):
        raise LlmError("the endpoint sent a malformed tool call (no function in it)")
    call_id = call.get("id")
    call_id = call_id if isinstance(call_id, str) and call_id else f"call_{step}_{index}"
    function = call["function"]
    name = function.get("name")
    raw = function.get("arguments", "{}")
    if not isinstance(name, str) or not name:
        record = ToolCall(step, str(name)[:60], raw, False, "the tool call names no tool")
        content: Any = {"error": record.error}
    else:
        arguments, problem = _arguments(raw)
        if problem:
            record = ToolCall(
                step, name, raw if isinstance(raw, str) else repr(raw), False, problem
            )
            content = {"error": problem}
        else:
            ok, content = run_tool(name, arguments)
            error = content.get("error", "") if not ok and isinstance(content, dict) else ""
            record = ToolCall(step, name, arguments, ok, str(error))
    exchange.calls.append(record)
    log(f"step {step}: tool {record.name} -> {'ok' if record.ok else record.error}")
    return {
        "role": "tool",
        "tool_call_id": call_id,
        "name": record.name,
        "content": json.dumps(content),
    }


def _arguments(raw: Any) -> tuple[Any, str]:
    """Arguments arrive as a JSON string (OpenAI) or, from some servers, as an object."""
    if isinstance(raw, Mapping):
        return dict(raw), ""
    if raw is None or raw == "":
        return {}, ""
    if not isinstance(raw, str):
        return None, "arguments must be a JSON object"
    try:
        parsed = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        return None, f"arguments are not valid JSON ({str(exc)[:80]})"
    if not isinstance(parsed, dict):
        return None, "arguments must be a JSON object"
    return parsed, ""


def _message_of(data: Any) -> dict[str, Any]:
    try:
        message = data["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise LlmError(
            "the endpoint's answer is not a chat completion (no choices[0].message)"
        ) from None
    if not isinstance(message, dict):
        raise LlmError("the endpoint's answer is not a chat completion (message is not an object)")
    return message


def _post(
    http: httpx.Client,
    settings: LlmSettings,
    body: dict[str, Any],
    exchange: Exchange,
    log: Callable[[str], None],
    sleep: Callable[[float], None],
) -> Any:
    headers = {"Content-Type": "application/json"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    where = settings.masked(settings.endpoint)
    problem = ""
    for attempt in range(settings.retries + 1):
        exchange.requests += 1
        wait = min(settings.backoff_s * 2**attempt, settings.longest_wait_s)
        try:
            response = http.post(settings.endpoint, json=body, headers=headers)
        except httpx.TimeoutException:
            problem = f"no answer within {settings.timeout_s:g} s"
        except httpx.HTTPError as exc:  # refused, reset, DNS, TLS
            problem = settings.masked(f"{type(exc).__name__}: {exc}")[:SNIPPET]
        else:
            if response.status_code == 200:
                try:
                    return response.json()
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                    raise LlmError(f"{where}: the answer is not JSON") from None
            problem = f"HTTP {response.status_code}"
            snippet = settings.masked(response.text[:SNIPPET].replace("\n", " ")).strip()
            if response.status_code not in RETRY_STATUSES:
                raise LlmError(f"{where}: {problem}" + (f" ({snippet})" if snippet else ""))
            wait = _retry_after(response, wait, settings.longest_wait_s)
        if attempt < settings.retries:
            log(f"{where}: {problem}; retrying in {wait:.2g} s")
            sleep(wait)
    raise LlmError(f"{where}: {problem} (after {settings.retries + 1} attempts)")


def _retry_after(response: httpx.Response, default: float, longest: float) -> float:
    """Seconds a 429/503 asks us to wait (delta-seconds or an HTTP date), bounded."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return default
    return min(max(seconds, 0.0), longest)
