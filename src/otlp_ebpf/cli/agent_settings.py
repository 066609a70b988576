"""The agent's settings: command-line options over a YAML file (`--config agent.yaml`) over
defaults, checked whole before anything starts; re-read on SIGHUP.

The file takes the options' long names as keys (`spill_dir` or `spill-dir`), e.g.

    interval: 10
    otlp: http://collector:4317
    serve: ":9464"
    budget: 1
    signals: [cpu, syscalls]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from otlp_ebpf.cli.common import CmdlinePolicy
from otlp_ebpf.errors import UsageError

MAX_CONFIG_BYTES = 1024 * 1024
# What a SIGHUP can change in a running agent; the rest needs a restart (the probes, the
# target set, the listening socket and the spill directory are set up once).
WATCH_KEYS = (
    "watch_window",
    "record_after",
    "burst_budget",
    "burst_intervals",
    "recordings_dir",
    "recordings_max_mb",
)
RELOADABLE = ("otlp", "budget", "cmdline", *WATCH_KEYS)


@dataclass(frozen=True)
class AgentSettings:
    signals: str = "cpu,syscalls"
    interval: float = 10.0
    otlp: str | None = None
    serve: str | None = None
    budget: float = 1.0
    pid: tuple[int, ...] = ()
    cgroup: str | None = None
    spill_dir: str = "otlp-ebpf-spill"
    spill_max_mb: float = 256.0
    frequency: int = 99
    cmdline: CmdlinePolicy = CmdlinePolicy.REDACT
    # the watch (docs/agent.md, "Findings, bursts and recordings")
    watch_window: int = 30
    record_after: int = 3
    burst_budget: float = 5.0
    burst_intervals: int = 6
    recordings_dir: str | None = None
    recordings_max_mb: float = 256.0


FIELDS = {f.name: f for f in dataclasses.fields(AgentSettings)}


def _number(key: str, value: Any, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"config: {key} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or (integer and not float(value).is_integer()):
        raise UsageError(f"config: {key} must be a finite {'whole ' if integer else ''}number")
    return int(value) if integer else float(value)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 4096:
        raise UsageError(f"config: {key} must be a non-empty string")
    return value


def _value(key: str, value: Any) -> Any:
    """A file value of `key` in the type of its option; UsageError naming the key."""
    if key == "signals":
        if isinstance(value, list):
            value = ",".join(_text(key, v) for v in value)
        return _text(key, value)
    if key == "pid":
        items = value if isinstance(value, list) else [value]
        return tuple(int(_number(key, v, integer=True)) for v in items)
    if key in ("frequency", "watch_window", "record_after", "burst_intervals"):
        return int(_number(key, value, integer=True))
    if key in ("interval", "budget", "spill_max_mb", "burst_budget", "recordings_max_mb"):
        return _number(key, value)
    if key == "cmdline":
        try:
            return CmdlinePolicy(_text(key, value))
        except ValueError:
            choices = ", ".join(p.value for p in CmdlinePolicy)
            raise UsageError(f"config: cmdline must be one of {choices}") from None
    return _text(key, value)


def parse_config(text: str, source: str) -> dict[str, Any]:
    """The settings a YAML text gives (keys normalized to option names); UsageError for bad
    YAML, a top level that is not a mapping, an unknown key or a value of the wrong type."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise UsageError(f"{source}: not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{source}: the top level must be a mapping of option: value")
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in FIELDS:
            known = ", ".join(FIELDS)
            raise UsageError(f"{source}: unknown key {str(raw_key)[:60]!r}; keys: {known}")
        try:
            out[key] = _value(key, value)
        except UsageError as exc:
            raise UsageError(f"{source}: {exc.message.removeprefix('config: ')}") from None
    return out


def load_config(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"{path}: more than {MAX_CONFIG_BYTES // 1024} KiB, not a configuration")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    return parse_config(text, path)


def resolve(flags: Mapping[str, Any], config_path: str | None) -> AgentSettings:
    """Flags given (not None) win over the file, which wins over the defaults."""
    values = load_config(config_path) if config_path else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    if "pid" in values:
        values["pid"] = tuple(values["pid"])
    return AgentSettings(**values)


def changes(old: AgentSettings, new: AgentSettings) -> tuple[list[str], list[str]]:
    """(reloadable keys that changed, keys that changed but need a restart)."""
    changed = [f for f in FIELDS if getattr(old, f) != getattr(new, f)]
    return [f for f in changed if f in RELOADABLE], [f for f in changed if f not in RELOADABLE]
