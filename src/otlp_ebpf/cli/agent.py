"""`otlp-ebpf agent`: continuous collection, one OTLP batch per interval, until stopped."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from otlp_ebpf import console
from otlp_ebpf.cli import common

if TYPE_CHECKING:
    from otlp_ebpf.collectors.agent import IntervalBatch
    from otlp_ebpf.export.config import OtlpConfig
    from otlp_ebpf.export.self_metrics import AgentFigures
    from otlp_ebpf.export.serve import Health
    from otlp_ebpf.export.spool import Spool
    from otlp_ebpf.export.stream import BatchStream

# SIGTERM: the last interval's batch gets this long to go out before it is spilled, so the
# whole stop (read, send or spill, detach) stays within the 5 s a service manager allows.
CLOSE_WAIT_S = 2.0


def register(app: typer.Typer) -> None:
    @app.command()
    def agent(
        signals: Annotated[
            str,
            typer.Option("--signals", metavar="LIST", help="Signals to collect: cpu,syscalls."),
        ] = "cpu,syscalls",
        interval: Annotated[
            float, typer.Option("--interval", help="Seconds per exported interval.")
        ] = 10.0,
        otlp: Annotated[
            str | None,
            typer.Option(
                "--otlp",
                metavar="URL",
                help="OTLP receiver (default from OTEL_EXPORTER_OTLP_ENDPOINT, else "
                "localhost:4317).",
            ),
        ] = None,
        serve: Annotated[
            str | None,
            typer.Option(
                "--serve",
                metavar="HOST:PORT",
                help="Serve /metrics (Prometheus), /healthz and /readyz on this address.",
            ),
        ] = None,
        budget: Annotated[
            float,
            typer.Option(
                "--budget",
                metavar="PCT",
                help="Keep the agent's steady cost at or under PCT% of one core by lowering "
                "the cpu sampling rate (0: no budget).",
            ),
        ] = 1.0,
        pid: common.PidOpt = None,
        spill_dir: Annotated[
            str,
            typer.Option(
                "--spill-dir",
                metavar="DIR",
                help="Where batches that could not be delivered wait to be re-sent.",
            ),
        ] = "otlp-ebpf-spill",
        spill_max_mb: Annotated[
            float,
            typer.Option(
                "--spill-max-mb", help="Cap of the spill directory; the oldest batches go first."
            ),
        ] = 256.0,
        frequency: Annotated[
            int, typer.Option("-F", "--frequency", help="cpu: samples per second on each CPU.")
        ] = 99,
        cmdline: common.CmdlineOpt = common.CmdlinePolicy.REDACT,
    ) -> int:
        """Collect continuously and export every interval over OTLP, until SIGTERM or Ctrl-C.

        Every --interval the agent reads what the kernel aggregated and sends the interval's
        profiles (cpu) and metrics (syscalls, and its own figures) to the OTLP receiver, off
        the collection loop. Batches that cannot be delivered after retries are kept in
        --spill-dir (capped, oldest dropped first) and re-sent in order once the receiver is
        back. SIGTERM sends (or spills) the current interval, detaches everything and exits 0.

        Examples: `otlp-ebpf agent --otlp http://collector:4317 --serve :9464`,
        `otlp-ebpf agent -p 1234 --interval 5 --signals cpu`.
        """
        from otlp_ebpf.collectors.agent import AgentConfig, parse_agent_signals, run
        from otlp_ebpf.collectors.budget import check_budget
        from otlp_ebpf.export.config import OtlpConfig
        from otlp_ebpf.export.self_metrics import AgentFigures, registry_of
        from otlp_ebpf.export.serve import Health, Server
        from otlp_ebpf.export.spool import Spool
        from otlp_ebpf.export.stream import BatchStream

        common.check_number(
            interval,
            "--interval",
            minimum=0.0,
            above_minimum=True,
            what="a positive number of seconds",
        )
        common.check_number(
            spill_max_mb,
            "--spill-max-mb",
            minimum=0.0,
            above_minimum=True,
            what="a positive number of MB",
        )
        if budget:
            check_budget(budget)
        config = AgentConfig(
            targets=common.target_spec(pid, 0, None),
            interval_s=interval,
            signals=parse_agent_signals(signals),
            frequency_hz=frequency,
            budget_pct=budget or None,
        )
        otlp_config = OtlpConfig.from_cli(otlp)
        spool = Spool(spill_dir, int(spill_max_mb * 1024 * 1024))
        figures = AgentFigures(budget_pct=budget)
        health = Health(stuck_after_s=max(3 * interval, 30.0))
        server = Server(serve, registry_of(figures), health) if serve else None
        stream = BatchStream(otlp_config, spool)
        figures.stream = stream.counts
        exporter = _Exporter(otlp_config, stream, figures, spool, health, cmdline)
        if server is not None:
            server.start()
            console.status(f"agent: serving /metrics, /healthz, /readyz on port {server.port}")
        targets = common.targets_text(config.targets.describe())
        console.status(
            f"agent: {','.join(config.signals)} ({targets}) every {interval:g} s to "
            f"{otlp_config.profiles.describe()}; SIGTERM or Ctrl-C to stop"
        )

        def ready() -> None:
            health.attached = True
            health.progress()

        try:
            batches = run(config, exporter, on_ready=ready, on_poll=health.progress)
        finally:
            stream.close(CLOSE_WAIT_S)
            if server is not None:
                server.stop()
        delivered = stream.counts.sent_batches + stream.counts.resent_batches
        console.status(
            f"agent: {batches} intervals; {delivered} batches delivered, "
            f"{len(spool)} waiting in {spill_dir}"
            + (f", {spool.dropped} dropped over the cap" if spool.dropped else "")
        )
        return 0


class _Exporter:
    """Each interval: the self-figures updated, the batch encoded and handed to the stream."""

    def __init__(
        self,
        config: OtlpConfig,
        stream: BatchStream,
        figures: AgentFigures,
        spool: Spool,
        health: Health,
        cmdline: common.CmdlinePolicy,
    ) -> None:
        self.config = config
        self.stream = stream
        self.figures = figures
        self.spool = spool
        self.health = health
        self.cmdline = cmdline

    def __call__(self, batch: IntervalBatch) -> None:
        from otlp_ebpf.export.self_metrics import otlp_request
        from otlp_ebpf.formatters.otlp_request import encode_requests

        self.figures.update_interval(
            events=batch.events,
            lost=batch.lost,
            bpf_ns=batch.bpf_ns,
            cpu_s=batch.cpu_s,
            rss_kb=batch.rss_kb,
            duration_s=batch.duration_s,
            cost_pct=batch.cost_pct,
            rates=batch.rates,
        )
        self.figures.dropped = self.spool.dropped
        self.figures.spill_bytes = self.spool.bytes()
        attrs = self.config.resource_attributes
        requests = []
        for section in batch.sections.values():
            requests.extend(encode_requests(common.with_cmdlines(section, self.cmdline), attrs))
        own = {"service.name": "otlp-ebpf", **attrs}
        own["host.name"] = _hostname()
        requests.append(otlp_request(self.figures, own))
        self.stream.submit(requests)
        self.health.exports_ok = self.stream.ok()
        self.health.progress()


def _hostname() -> str:
    import socket

    return socket.gethostname()
