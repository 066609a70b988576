"""Deliver a snapshot to an OTLP receiver; spill what could not be delivered to a file.

Both signals go through the one transport (export/profiles_transport.py). When a request
still fails after its retries, the undelivered requests are written to
`<kind>-<timestamp>.otlp.pb` (see otlp_ebpf.formatters.otlp_request) so that
`otlp-ebpf push FILE` can send them later, and the run ends with exit code 1.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from otlp_ebpf import console
from otlp_ebpf.errors import RuntimeFailure
from otlp_ebpf.export.config import OtlpConfig, SignalTarget
from otlp_ebpf.export.profiles_transport import ExportFailed, send_request
from otlp_ebpf.formatters.otlp_request import (
    EncodedRequest,
    read_request_file,
    snapshot_requests,
    write_requests,
)
from otlp_ebpf.formatters.registry import write_atomically
from otlp_ebpf.model import Snapshot


@dataclass(frozen=True)
class Failure:
    request: EncodedRequest
    target: SignalTarget
    reason: str


def deliver(snapshot: Snapshot, config: OtlpConfig, *, spill_dir: str = ".") -> None:
    """Send `snapshot` as OTLP profiles and/or metrics.

    On final failure the undelivered requests are saved to a spill file (named on stderr) and
    RuntimeFailure is raised.
    """
    sent, failures = send_snapshot(snapshot, config)
    if not sent and not failures:
        console.status(f"OTLP: the {snapshot.kind} snapshot has nothing to send")
    if failures:
        path = spill([f.request for f in failures], snapshot.kind, spill_dir)
        console.warn(f"OTLP delivery failed; saved to {path} (resend with: otlp-ebpf push {path})")
        raise RuntimeFailure(failure_message(failures), hint=f"the data is kept in {path}")


def send_snapshot(snapshot: Snapshot, config: OtlpConfig) -> tuple[list[str], list[Failure]]:
    """Try every request of `snapshot` once (with the transport's retries); what was sent
    and what failed, nothing spilled."""
    failures: list[Failure] = []
    sent: list[str] = []
    for request in snapshot_requests(snapshot, config.resource_attributes).encoded():
        target = config.target(request.signal)
        _send(partial(send_request, request.payload, target), request, target, sent, failures)
    return sent, failures


def deliver_file(path: str, config: OtlpConfig) -> None:
    """Send every request stored in an `.otlp.pb` file.

    UsageError when the file is unreadable or corrupt; RuntimeFailure when a request could not
    be delivered. The file then keeps only what was not delivered, so pushing it again never
    sends a batch twice.
    """
    failures: list[Failure] = []
    sent: list[str] = []
    for request in read_request_file(path):
        target = config.target(request.signal)
        _send(partial(send_request, request.payload, target), request, target, sent, failures)
    if failures:
        if sent:
            undelivered = [f.request for f in failures]
            write_atomically(path, lambda stream: write_requests(undelivered, stream))
        raise RuntimeFailure(f"{path}: {failure_message(failures)}")


def _send(
    send: Callable[[], object],
    request: EncodedRequest,
    target: SignalTarget,
    sent: list[str],
    failures: list[Failure],
) -> None:
    try:
        send()
    except ExportFailed as exc:
        failures.append(Failure(request, target, exc.reason))
        return
    sent.append(request.signal)
    console.status(f"OTLP: sent {request.signal} to {target.describe()}")


def failure_message(failures: list[Failure]) -> str:
    return "; ".join(
        f"OTLP {f.request.signal} export to {f.target.describe()} failed: {f.reason}"
        for f in failures
    )


def spill(requests: list[EncodedRequest], kind: str, spill_dir: str = ".") -> str:
    """Write `requests` to a new `<kind>-<UTC timestamp>.otlp.pb` in `spill_dir`; its path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for suffix in ("", *(f"-{n}" for n in range(1, 100))):
        path = os.path.join(spill_dir, f"{kind}-{stamp}{suffix}.otlp.pb")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise RuntimeFailure(
                f"OTLP delivery failed and the data could not be saved to {spill_dir}: "
                f"{exc.strerror or exc}"
            ) from exc
        with os.fdopen(fd, "wb") as stream:
            write_requests(requests, stream)
        return path
    raise RuntimeFailure(f"OTLP delivery failed and {spill_dir} has no free spill file name")
