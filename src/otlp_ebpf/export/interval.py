"""Periodic OTLP export off the collection loop, one spill file per outage.

With `--interval` and `--otlp`, every tick hands the cumulative snapshot so far to a
background thread and returns at once: an unreachable collector (each attempt retried for up
to the OTLP timeout) never holds up the loop, the live view or Ctrl-C. Snapshots are
cumulative, so only the newest one waiting matters: a tick that comes while a push is in
flight replaces the snapshot waiting behind it.

While the collector cannot be reached, the newest undelivered batch is kept in one spill file
for the whole outage (rewritten in place at each failed tick, so it always holds everything
so far); the first push that goes through again supersedes it, and it is removed. At the end
of the run, if the collector was unreachable at the last attempt (or a push is still in
flight), the final batch goes straight to that file instead of waiting through another round
of retries: the run ends within a second of Ctrl-C, and `otlp-ebpf push FILE` sends it later.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

from otlp_ebpf import console
from otlp_ebpf.errors import RuntimeFailure
from otlp_ebpf.export.config import OtlpConfig
from otlp_ebpf.export.deliver import deliver, failure_message, send_snapshot, spill
from otlp_ebpf.formatters.otlp_request import EncodedRequest, snapshot_requests, write_requests
from otlp_ebpf.formatters.registry import write_atomically
from otlp_ebpf.model import Snapshot

# How long the end of a run waits for a push in flight before spilling the final batch.
FINISH_WAIT_S = 0.5


class IntervalExporter:
    """Call it with each tick's cumulative snapshot; `finish(final)` at the end of the run."""

    def __init__(
        self,
        config: OtlpConfig,
        spill_dir: str = ".",
        prepare: Callable[[Snapshot], Snapshot] = lambda snapshot: snapshot,
    ) -> None:
        self.config = config
        self.prepare = prepare  # what leaves the process (command lines redacted ...)
        self.spill_dir = spill_dir
        self.outage_file = ""  # the spill file of the outage in progress, if any
        self.spills = 0  # spill files created (one per outage)
        self._waiting: Snapshot | None = None
        self._busy = False
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="otlp-interval", daemon=True)
        self._thread.start()

    def __call__(self, snapshot: Snapshot) -> None:
        prepared = self.prepare(snapshot)
        with self._wake:
            self._waiting = prepared
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._waiting is None and not self._closed:
                    self._wake.wait()
                snapshot, self._waiting = self._waiting, None
                if self._closed or snapshot is None:
                    return
                self._busy = True
            try:
                self._push(snapshot)
            except Exception as exc:  # a thread must not die silently: say it, go on
                console.warn(f"interval export failed, run continues: {exc}")
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

    def _push(self, snapshot: Snapshot) -> None:
        _, failures = send_snapshot(snapshot, self.config)
        if failures:
            path = self._keep([f.request for f in failures], snapshot.kind)
            console.warn(
                f"interval export failed, run continues; undelivered data kept in {path}: "
                f"{failure_message(failures)}"
            )
        elif self.outage_file:
            console.status(f"OTLP: delivery works again; {self.outage_file} is superseded")
            with contextlib.suppress(OSError):
                os.unlink(self.outage_file)
            self.outage_file = ""

    def _keep(self, requests: list[EncodedRequest], kind: str) -> str:
        """The outage's one spill file, holding the newest undelivered batch."""
        if not self.outage_file:
            self.outage_file = spill(requests, kind, self.spill_dir)
            self.spills += 1
        else:
            write_atomically(self.outage_file, lambda stream: write_requests(requests, stream))
        return self.outage_file

    def finish(self, final: Snapshot) -> None:
        """Stop pushing and deliver the final snapshot: at once to the outage's spill file
        when the collector was unreachable at the last try (RuntimeFailure, exit 1), else
        normally (with retries, and a spill file if that fails)."""
        final = self.prepare(final)
        with self._wake:
            self._waiting = None
            if self._busy:
                self._wake.wait(FINISH_WAIT_S)
            in_flight = self._busy
            self._closed = True
            self._wake.notify_all()
        if not (in_flight or self.outage_file):
            deliver(final, self.config, spill_dir=self.spill_dir)
            return
        requests = list(snapshot_requests(final, self.config.resource_attributes).encoded())
        path = self._keep(requests, final.kind)
        why = "still waiting for the collector" if in_flight else "the collector is unreachable"
        console.warn(f"OTLP: {why}; final batch saved to {path} (resend: otlp-ebpf push {path})")
        raise RuntimeFailure(f"OTLP export failed: {why}", hint=f"the data is kept in {path}")
