"""`--serve HOST:PORT`: `/metrics`, `/healthz` and `/readyz` of the agent over HTTP.

- `/metrics`: the self-metrics in the Prometheus text format (prometheus-client).
- `/healthz`: 200 while the collection loop makes progress; 503 when it has not come round for
  `stuck_after_s` (a hung read or export would show here and a liveness probe restarts it).
- `/readyz`: 200 once every probe is attached and exports succeed or are being spilled.
"""

from __future__ import annotations

import errno
import http.server
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from otlp_ebpf.errors import UsageError

MAX_ADDRESS_CHARS = 300


@dataclass
class Health:
    """Loop progress and readiness, set by the agent, read by the endpoints."""

    stuck_after_s: float
    attached: bool = False
    exports_ok: bool = True
    last_progress: float = field(default_factory=time.monotonic)

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def live(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now - self.last_progress <= self.stuck_after_s

    def ready(self) -> bool:
        return self.attached and self.exports_ok


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:9464`, `:9464` for every address) -> (host, port); UsageError."""
    if len(text) > MAX_ADDRESS_CHARS or not text.isprintable() or " " in text:
        raise UsageError(f"--serve: not a HOST:PORT address: {text[:60]!r}")
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"--serve: give HOST:PORT with a port from 1 to 65535, got {text!r}")
    host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"
    return host, int(port_text)


class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


class Server:
    """A threaded HTTP server; `Server(...)` binds at once (UsageError, exit 2, when the
    address is taken or cannot be bound), `start()` serves, `stop()` closes."""

    def __init__(self, address: str, registry: CollectorRegistry, health: Health) -> None:
        host, port = parse_address(address)
        handler = _handler(registry, health)
        server_type = _V6Server if ":" in host else http.server.ThreadingHTTPServer
        try:
            self.httpd = server_type((host, port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"--serve {address}: the port is in use by another process",
                    hint="pick another port",
                ) from exc
            raise UsageError(f"--serve {address}: cannot listen: {exc.strerror or exc}") from exc
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="otlp-agent-serve",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()


def _handler(
    registry: CollectorRegistry, health: Health
) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = health.live()
                self._reply(200 if ok else 503, b"ok\n" if ok else b"collection loop stuck\n")
            elif path == "/readyz":
                ok = health.ready()
                self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._reply(404, b"not found: try /metrics, /healthz, /readyz\n")

        def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every few seconds is not news

    return Handler
