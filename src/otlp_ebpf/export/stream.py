"""A stream of interval batches to an OTLP receiver, off the collection loop, nothing lost
while an outage fits the spill cap.

The agent hands one batch (the encoded requests of one interval) per interval to `submit`,
which returns at once. A background thread sends each batch with the transport's retries
(exponential backoff within the OTLP timeout). What still fails goes to the spool; while the
spool holds anything, new batches queue behind it (so the receiver sees intervals in order)
and every new batch first tries to re-send the oldest spilled one.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from otlp_ebpf import console
from otlp_ebpf.export.config import OtlpConfig
from otlp_ebpf.export.profiles_transport import DEFAULT_BACKOFF, Backoff, ExportFailed, send_request
from otlp_ebpf.export.spool import Spool, resend_all
from otlp_ebpf.formatters.otlp_request import EncodedRequest

Batch = list[EncodedRequest]


@dataclass
class StreamCounts:
    """What the stream did so far (read by the self-metrics)."""

    attempts: int = 0  # requests tried (each with its own retries)
    failures: int = 0  # requests that failed after their retries
    sent_batches: int = 0
    spilled_batches: int = 0
    resent_batches: int = 0
    spill_errors: int = 0  # batches that could not even be spilled (lost)
    refused: int = 0  # requests the receiver refused for good (dropped: resending cannot help)


class BatchStream:
    """`submit(batch)` every interval; `close(wait_s)` at the end (what is left is spilled)."""

    def __init__(self, config: OtlpConfig, spool: Spool, backoff: Backoff = DEFAULT_BACKOFF):
        self.config = config
        self.spool = spool
        self.backoff = backoff
        self.counts = StreamCounts()
        self.last_error = ""
        self._queue: deque[Batch] = deque()
        self._in_flight: Batch | None = None
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="otlp-agent-export", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        with self._wake:
            self._queue.append(batch)
            self._wake.notify()

    def ok(self) -> bool:
        """Exports succeed or are being spilled: no batch was lost for want of a spill."""
        return self.counts.spill_errors == 0

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if not self._queue:
                    return
                batch = self._in_flight = self._queue.popleft()
            try:
                self._handle(batch)
            except Exception as exc:  # the thread must outlive any one batch
                console.warn(f"agent: export of a batch failed unexpectedly: {exc}")
            finally:
                with self._wake:
                    self._in_flight = None
                    self._wake.notify_all()

    def _handle(self, batch: Batch) -> None:
        if len(self.spool):
            self.counts.resent_batches += resend_all(self.spool, self._send_all)
            if len(self.spool):  # still down: keep the order, spill behind the others
                self._spill(batch)
                self._spill_queued()
                return
        left = self._send(batch)
        if left:
            self._spill(left)
        else:
            self.counts.sent_batches += 1

    def _send_all(self, batch: Batch) -> bool:
        left = self._send(batch)
        if left and len(left) < len(batch):
            self._spill_front(left)
        return not left

    def _spill_front(self, left: Batch) -> None:
        """Part of a spilled batch went through: keep only the rest, still the oldest."""
        entry = self.spool.oldest()
        if entry is not None:
            self.spool.replace(entry[0], left)

    def _send(self, batch: Batch) -> Batch:
        """Try each request of the batch; the ones that did not go through."""
        for i, request in enumerate(batch):
            self.counts.attempts += 1
            try:
                send_request(
                    request.payload, self.config.target(request.signal), backoff=self.backoff
                )
            except ExportFailed as exc:
                self.counts.failures += 1
                self.last_error = exc.reason
                if exc.permanent:  # a batch the receiver will never take must not block the rest
                    self.counts.refused += 1
                    console.warn(
                        f"agent: the receiver refused a {request.signal} request for "
                        f"good, dropped: {exc.reason}"
                    )
                    continue
                return batch[i:]
        return []

    def _spill(self, batch: Batch) -> None:
        try:
            path = self.spool.add(batch)
        except OSError as exc:
            self.counts.spill_errors += 1
            console.warn(f"agent: a batch is lost: cannot spill it: {exc.strerror or exc}")
            return
        self.counts.spilled_batches += 1
        console.warn(f"agent: OTLP export failed ({self.last_error}); batch kept in {path}")

    def _spill_queued(self) -> None:
        while True:
            with self._wake:
                if not self._queue:
                    return
                batch = self._queue.popleft()
            self._spill(batch)

    def close(self, wait_s: float) -> None:
        """Let the thread finish what is queued for up to `wait_s`, then spill the rest (and a
        copy of a batch still in flight: sent twice at worst, never lost)."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(wait_s)
        with self._wake:
            left = list(self._queue)
            self._queue.clear()
            if self._in_flight is not None:
                left.insert(0, self._in_flight)
        for batch in left:
            self._spill(batch)
