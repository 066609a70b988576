"""`otlp-ebpf agent`: continuous collection, one OTLP batch per interval, until stopped."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from otlp_ebpf import console
from otlp_ebpf.cli import common

if TYPE_CHECKING:
    from otlp_ebpf.cli.agent_settings import AgentSettings
    from otlp_ebpf.collectors.agent import Agent, AgentConfig, IntervalBatch
    from otlp_ebpf.collectors.agent_watch import Watch, WatchConfig
    from otlp_ebpf.export.config import OtlpConfig
    from otlp_ebpf.export.self_metrics import AgentFigures
    from otlp_ebpf.export.serve import Health
    from otlp_ebpf.export.spool import Spool
    from otlp_ebpf.export.stream import BatchStream
    from otlp_ebpf.formatters.otlp_request import EncodedRequest

# SIGTERM: the last interval's batch gets this long to go out before it is spilled, so the
# whole stop (read, send or spill, detach) stays within the 5 s a service manager allows.
CLOSE_WAIT_S = 2.0
# /healthz: the loop is stuck when it has not come round for 3 intervals, and never sooner than
# this (a tick that names a burst of new stacks must not look like a hang).
STUCK_FLOOR_S = 5.0


def register(app: typer.Typer) -> None:
    @app.command()
    def agent(
        signals: Annotated[
            str | None,
            typer.Option(
                "--signals",
                metavar="LIST",
                help="Signals to collect: cpu, syscalls, net, mem (default cpu,syscalls).",
            ),
        ] = None,
        interval: Annotated[
            float | None,
            typer.Option("--interval", help="Seconds per exported interval (default 10)."),
        ] = None,
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
        config_file: Annotated[
            str | None,
            typer.Option(
                "--config",
                metavar="FILE",
                help="YAML file with the same keys as the options (options given win); "
                "SIGHUP re-reads it.",
            ),
        ] = None,
        budget: Annotated[
            float | None,
            typer.Option(
                "--budget",
                metavar="PCT",
                help="Keep the agent's steady cost at or under PCT% of one core by lowering "
                "the cpu sampling rate (default 1; 0: no budget).",
            ),
        ] = None,
        pid: common.PidOpt = None,
        cgroup: Annotated[
            str | None,
            typer.Option(
                "--cgroup",
                metavar="PATH",
                help="Collect only from the processes of this cgroup subtree (cgroup v2, "
                "absolute or under /sys/fs/cgroup) and their children.",
            ),
        ] = None,
        spill_dir: Annotated[
            str | None,
            typer.Option(
                "--spill-dir",
                metavar="DIR",
                help="Where batches that could not be delivered wait to be re-sent "
                "(default ./otlp-ebpf-spill).",
            ),
        ] = None,
        spill_max_mb: Annotated[
            float | None,
            typer.Option(
                "--spill-max-mb",
                help="Cap of the spill directory; the oldest batches go first (default 256).",
            ),
        ] = None,
        frequency: Annotated[
            int | None,
            typer.Option(
                "-F", "--frequency", help="cpu: samples per second on each CPU (default 99)."
            ),
        ] = None,
        watch_window: Annotated[
            int | None,
            typer.Option(
                "--watch-window",
                metavar="N",
                help="Run analyze's inspections every interval over the last N intervals "
                "and export new findings as OTLP logs (default 30; 0: off).",
            ),
        ] = None,
        burst_budget: Annotated[
            float | None,
            typer.Option(
                "--burst-budget",
                metavar="PCT",
                help="After a finding, sample at full rate under this budget instead of "
                "--budget (default 5).",
            ),
        ] = None,
        burst_intervals: Annotated[
            int | None,
            typer.Option(
                "--burst-intervals",
                metavar="N",
                help="How many intervals a burst of full-rate sampling lasts (default 6).",
            ),
        ] = None,
        recordings_dir: Annotated[
            str | None,
            typer.Option(
                "--recordings-dir",
                metavar="DIR",
                help="Write a record snapshot of the intervals around each finding here "
                "(for report, analyze and ask; default: none).",
            ),
        ] = None,
        recordings_max_mb: Annotated[
            float | None,
            typer.Option(
                "--recordings-max-mb",
                help="Cap of the recordings directory; the oldest go first (default 256).",
            ),
        ] = None,
        record_after: Annotated[
            int | None,
            typer.Option(
                "--record-after",
                metavar="N",
                help="Intervals after a finding that its recording waits for (default 3).",
            ),
        ] = None,
        cmdline: Annotated[
            common.CmdlinePolicy | None,
            typer.Option(
                "--cmdline",
                help="Command lines of the processes seen, in OTLP: secret-looking values "
                "masked (default), kept whole, or left out.",
            ),
        ] = None,
    ) -> int:
        """Collect continuously and export every interval over OTLP, until SIGTERM or Ctrl-C.

        Every --interval the agent reads what the kernel aggregated and sends the interval's
        profiles (cpu) and metrics (syscalls, and its own figures) to the OTLP receiver, off
        the collection loop. Batches that cannot be delivered after retries are kept in
        --spill-dir (capped, oldest dropped first) and re-sent in order once the receiver is
        back. SIGTERM sends (or spills) the current interval, detaches everything and exits 0.
        SIGHUP re-reads --config (the receiver, --budget, --cmdline and the watch's options
        change at once).

        Examples: `otlp-ebpf agent --otlp http://collector:4317 --serve :9464`,
        `otlp-ebpf agent --config /etc/otlp-ebpf/agent.yaml`.
        """
        from otlp_ebpf.cli.agent_settings import resolve

        flags = {
            "signals": signals,
            "interval": interval,
            "otlp": otlp,
            "serve": serve,
            "budget": budget,
            "pid": tuple(pid) if pid else None,
            "cgroup": cgroup,
            "spill_dir": spill_dir,
            "spill_max_mb": spill_max_mb,
            "frequency": frequency,
            "cmdline": cmdline,
            "watch_window": watch_window,
            "burst_budget": burst_budget,
            "burst_intervals": burst_intervals,
            "recordings_dir": recordings_dir,
            "recordings_max_mb": recordings_max_mb,
            "record_after": record_after,
        }
        settings = resolve(flags, config_file)
        return _Run(settings, flags, config_file).run()


class _Run:
    """One agent run: settings checked, endpoints and spool set up, the loop, the reloads."""

    def __init__(self, settings: AgentSettings, flags: dict[str, Any], path: str | None):
        from otlp_ebpf.export.config import OtlpConfig
        from otlp_ebpf.export.self_metrics import AgentFigures, registry_of
        from otlp_ebpf.export.serve import Health, Server
        from otlp_ebpf.export.spool import Spool
        from otlp_ebpf.export.stream import BatchStream

        self.settings, self.flags, self.path = settings, flags, path
        self.config: AgentConfig = check(settings)
        self.otlp = OtlpConfig.from_cli(settings.otlp)
        self.spool = Spool(settings.spill_dir, int(settings.spill_max_mb * 1024 * 1024))
        self.figures = AgentFigures(budget_pct=settings.budget)
        self.health = Health(stuck_after_s=max(3 * settings.interval, STUCK_FLOOR_S))
        self.server = (
            Server(settings.serve, registry_of(self.figures), self.health)
            if settings.serve
            else None
        )
        self.stream = BatchStream(self.otlp, self.spool)
        self.figures.stream = self.stream.counts
        self.watch = watch_of(settings)
        self.exporter = _Exporter(
            self.otlp, self.stream, self.figures, self.spool, self.health, settings.cmdline
        )
        self.exporter.watch = self.watch
        self.hangup = False

    def run(self) -> int:
        import signal

        from otlp_ebpf.collectors.agent import run

        s = self.settings
        if self.server is not None:
            self.server.start()
            console.status(f"agent: serving /metrics, /healthz, /readyz on port {self.server.port}")
        where = f"cgroup {s.cgroup}" if s.cgroup else ", ".join(self.config.targets.describe())
        console.status(
            f"agent: {','.join(self.config.signals)} ({common.targets_text([where])}) every "
            f"{s.interval:g} s to {self.otlp.profiles.describe()}; SIGTERM or Ctrl-C to stop"
        )
        previous = signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            batches = run(
                self.config,
                self.exporter,
                on_ready=self._ready,
                on_poll=self._poll,
                watch=self.watch,
            )
        finally:
            signal.signal(signal.SIGHUP, previous)
            self.stream.close(CLOSE_WAIT_S)
            if self.server is not None:
                self.server.stop()
        delivered = self.stream.counts.sent_batches + self.stream.counts.resent_batches
        dropped = self.spool.dropped
        console.status(
            f"agent: {batches} intervals; {delivered} batches delivered, "
            f"{len(self.spool)} waiting in {s.spill_dir}"
            + (f", {dropped} dropped over the cap" if dropped else "")
        )
        return 0

    def _ready(self) -> None:
        self.health.attached = True
        self.health.progress()

    def _on_hangup(self, _signum: int, _frame: object) -> None:
        self.hangup = True  # applied by the loop between two polls, never in the handler

    def _poll(self, agent: Agent) -> None:
        self.health.progress()
        if self.hangup:
            self.hangup = False
            self.reload(agent)

    def reload(self, agent: Agent) -> None:
        """Re-read the configuration; apply what can change live, keep everything on error."""
        from otlp_ebpf.cli.agent_settings import WATCH_KEYS, changes, resolve
        from otlp_ebpf.errors import OtlpEbpfError
        from otlp_ebpf.export.config import OtlpConfig

        if not self.path:
            console.warn("agent: SIGHUP ignored: no --config file to re-read")
            return
        try:
            new = resolve(self.flags, self.path)
            check(new)
            otlp = OtlpConfig.from_cli(new.otlp)
        except OtlpEbpfError as exc:
            console.warn(f"agent: configuration not reloaded, the running one is kept: {exc}")
            return
        live, later = changes(self.settings, new)
        if any(key in WATCH_KEYS for key in live):
            try:
                rewatch = self._rewatch(new)
            except OtlpEbpfError as exc:
                console.warn(f"agent: configuration not reloaded, the running one is kept: {exc}")
                return
            rewatch(agent)
        if "otlp" in live:
            self.otlp = self.exporter.config = self.stream.config = otlp
        if "budget" in live:
            agent.set_budget(new.budget or None)
            self.figures.budget_pct = new.budget
        if "cmdline" in live:
            self.exporter.cmdline = new.cmdline
        kept = {k: getattr(self.settings, k) for k in later}
        self.settings = dataclasses.replace(new, **kept)
        console.status(
            f"agent: configuration reloaded ({', '.join(live) or 'no live change'})"
            + (f"; {', '.join(later)} change at restart only" if later else "")
        )

    def _rewatch(self, new: AgentSettings) -> Callable[[Agent], None]:
        """What puts the new watch options in force. Whatever can fail (creating the
        recordings directory) is done here, before anything of the running agent changes."""
        from otlp_ebpf.collectors.agent_recordings import RecordingsDir

        watch = self.watch
        if watch is None:  # started with --watch-window 0
            started = watch_of(new)

            def start(agent: Agent) -> None:
                self.watch = self.exporter.watch = agent.watch = started

            return start
        recordings = (
            RecordingsDir(new.recordings_dir, int(new.recordings_max_mb * 1024 * 1024))
            if new.recordings_dir
            else None
        )
        config = watch_config_of(new)
        return lambda agent: watch.reconfigure(config, recordings, agent.recording.governor)


def watch_config_of(settings: AgentSettings) -> WatchConfig:
    from otlp_ebpf.collectors.agent_watch import WatchConfig

    return WatchConfig(
        window=settings.watch_window,
        record_after=settings.record_after,
        burst_budget_pct=settings.burst_budget,
        burst_intervals=settings.burst_intervals,
        recordings_dir=settings.recordings_dir,
        recordings_max_mb=settings.recordings_max_mb,
    )


def watch_of(settings: AgentSettings) -> Watch | None:
    """The watch the settings ask for (None with --watch-window 0); the recordings
    directory is created here, before anything is loaded."""
    from otlp_ebpf.collectors.agent_watch import Watch

    if settings.watch_window <= 0:
        return None
    return Watch(watch_config_of(settings), settings.interval)


def _check_watch(settings: AgentSettings) -> None:
    from otlp_ebpf.collectors.budget import check_budget
    from otlp_ebpf.errors import UsageError

    for option, value in (
        ("--watch-window", settings.watch_window),
        ("--record-after", settings.record_after),
        ("--burst-intervals", settings.burst_intervals),
    ):
        common.check_number(value, option, minimum=0, what="a whole number of intervals")
    try:
        check_budget(settings.burst_budget)
    except UsageError as exc:
        raise UsageError(exc.message.replace("--budget", "--burst-budget")) from None
    common.check_number(
        settings.recordings_max_mb,
        "--recordings-max-mb",
        minimum=0.0,
        above_minimum=True,
        what="a positive number of MB",
    )


def check(settings: AgentSettings) -> AgentConfig:
    """The settings checked whole (UsageError, exit 2) and turned into the collector's config."""
    from otlp_ebpf.collectors.agent import AgentConfig, parse_agent_signals
    from otlp_ebpf.collectors.budget import check_budget
    from otlp_ebpf.errors import UsageError
    from otlp_ebpf.export.serve import parse_address
    from otlp_ebpf.targets import TargetSpec

    common.check_number(
        settings.interval,
        "--interval",
        minimum=0.0,
        above_minimum=True,
        what="a positive number of seconds",
    )
    common.check_number(
        settings.spill_max_mb,
        "--spill-max-mb",
        minimum=0.0,
        above_minimum=True,
        what="a positive number of MB",
    )
    if settings.budget:
        check_budget(settings.budget)
    _check_watch(settings)
    if settings.serve:
        parse_address(settings.serve)
    if settings.pid and settings.cgroup:
        raise UsageError("give either --pid or --cgroup, not both")
    targets = common.target_spec(settings.pid, 0, None)
    cgroup = None
    if settings.cgroup:
        from otlp_ebpf.collectors.containers import cgroup_target_pids, resolve_cgroup

        targets = TargetSpec(pids=cgroup_target_pids(settings.cgroup))
        cgroup = resolve_cgroup(settings.cgroup)
    return AgentConfig(
        targets=targets,
        interval_s=settings.interval,
        signals=parse_agent_signals(settings.signals),
        frequency_hz=settings.frequency,
        budget_pct=settings.budget or None,
        cgroup=cgroup,
    )


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
        self.watch: Watch | None = None

    def __call__(self, batch: IntervalBatch) -> None:
        from otlp_ebpf.export.process_resources import add_process_attributes
        from otlp_ebpf.export.self_metrics import otlp_request
        from otlp_ebpf.formatters.otlp_request import encode_requests

        self.figures.update_interval(
            events=batch.events,
            lost=batch.lost,
            bpf_ns=batch.bpf_ns,
            cpu_s=batch.cpu_s,
            rss_kb=batch.rss_kb,
            helpers_rss_kb=batch.helpers_rss_kb,
            duration_s=batch.duration_s,
            cost_pct=batch.cost_pct,
            rates=batch.rates,
            deferred=batch.deferred,
            deferred_dropped=batch.deferred_dropped,
        )
        self.figures.dropped = self.spool.dropped
        self.figures.spill_bytes = self.spool.bytes()
        attrs = self.config.resource_attributes
        requests = []
        for section in batch.sections.values():
            for request in encode_requests(common.with_cmdlines(section, self.cmdline), attrs):
                requests.append(add_process_attributes(request, batch.process_attributes))
        own = {"service.name": "otlp-ebpf", **attrs}
        own["host.name"] = _hostname()
        if self.watch is not None:
            self.figures.update_watch(self.watch.counts)
        if batch.findings:
            requests.append(_findings_request(batch, own))
        requests.append(otlp_request(self.figures, own))
        self.stream.submit(requests)
        self.health.exports_ok = self.stream.ok()
        self.health.progress()


def _findings_request(batch: IntervalBatch, resource: dict[str, str]) -> EncodedRequest:
    from otlp_ebpf.formatters.otlp_findings import findings_request
    from otlp_ebpf.formatters.otlp_request import EncodedRequest

    payload = findings_request(batch.findings, resource).SerializeToString()
    return EncodedRequest("logs", payload)


def _hostname() -> str:
    import socket

    return socket.gethostname()
