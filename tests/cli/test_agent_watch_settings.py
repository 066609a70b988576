"""The watch's options in the agent's YAML file and on the command line: same keys, checked
whole before anything is loaded, one clear line and exit 2 for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from otlp_ebpf.cli.agent import check, watch_of
from otlp_ebpf.cli.agent_settings import AgentSettings, parse_config, resolve
from otlp_ebpf.cli.app import run
from otlp_ebpf.errors import UsageError


def test_the_watch_keys_in_the_file_are_the_options(tmp_path: Path) -> None:
    text = (
        "watch-window: 20\nrecord_after: 2\nburst_budget: 3.5\nburst-intervals: 4\n"
        f"recordings_dir: {tmp_path / 'rec'}\nrecordings-max-mb: 16\n"
    )
    values = parse_config(text, "agent.yaml")
    assert values == {
        "watch_window": 20,
        "record_after": 2,
        "burst_budget": 3.5,
        "burst_intervals": 4,
        "recordings_dir": str(tmp_path / "rec"),
        "recordings_max_mb": 16.0,
    }
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    settings = resolve({"burst_budget": 8.0}, str(path))  # the option given wins
    assert settings.burst_budget == 8.0 and settings.watch_window == 20
    watch = watch_of(settings)
    assert watch is not None
    assert watch.config.window == 20 and watch.burst.budget_pct == 8.0
    assert watch.ring.max_intervals == 20 + 2 + 1
    assert (tmp_path / "rec").is_dir()


def test_a_watch_window_of_zero_turns_the_watch_off() -> None:
    assert watch_of(AgentSettings(watch_window=0)) is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (AgentSettings(watch_window=-1), "--watch-window"),
        (AgentSettings(record_after=-2), "--record-after"),
        (AgentSettings(burst_intervals=-1), "--burst-intervals"),
        (AgentSettings(burst_budget=0.0), "--burst-budget"),
        (AgentSettings(burst_budget=101.0), "--burst-budget"),
        (AgentSettings(recordings_max_mb=0.0), "--recordings-max-mb"),
    ],
)
def test_bad_watch_values_are_refused(settings: AgentSettings, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check(settings)


def test_a_bad_watch_key_type_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("watch_window: 2.5\n")
    assert run(["agent", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "watch_window must be a finite whole number" in err and "Traceback" not in err


def test_an_unwritable_recordings_dir_is_exit_2(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    spill = str(tmp_path / "spill")
    assert run(["agent", "--recordings-dir", str(blocker / "rec"), "--spill-dir", spill]) == 2
    assert "--recordings-dir" in capsys.readouterr().err


def _reload(tmp_path: Path, first: str, then: str):
    """An agent's settings from `first`, reloaded from `then` (what SIGHUP does between two
    polls), without collecting: the watch and what the reload said."""
    from types import SimpleNamespace

    from otlp_ebpf.cli.agent import _Run

    path = tmp_path / "agent.yaml"
    path.write_text(first + f"spill_dir: {tmp_path / 'spill'}\n")
    flags: dict = {}
    running = _Run(resolve(flags, str(path)), flags, str(path))
    agent = SimpleNamespace(recording=SimpleNamespace(governor=None), watch=running.watch)
    path.write_text(then + f"spill_dir: {tmp_path / 'spill'}\n")
    running.reload(agent)  # type: ignore[arg-type]
    return running, agent


def test_sighup_reloads_the_watch_options(tmp_path: Path, capsys) -> None:
    running, agent = _reload(
        tmp_path,
        "watch_window: 20\n",
        f"watch_window: 8\nrecord_after: 2\nburst_budget: 7\nburst_intervals: 3\n"
        f"recordings_dir: {tmp_path / 'rec'}\nrecordings_max_mb: 4\n",
    )
    watch = running.watch
    assert watch is not None and agent.watch is watch and running.exporter.watch is watch
    assert watch.config.window == 8 and watch.ring.max_intervals == 8 + 2 + 1
    assert watch.episodes.quiet == 8
    assert (watch.burst.budget_pct, watch.burst.intervals) == (7.0, 3)
    assert watch.recordings is not None and (tmp_path / "rec").is_dir()
    assert watch.recordings.cap_bytes == 4 * 1024 * 1024
    assert running.settings.recordings_dir == str(tmp_path / "rec")
    err = capsys.readouterr().err
    assert "configuration reloaded (watch_window, record_after, burst_budget" in err
    assert "restart only" not in err


def test_sighup_starts_a_watch_that_was_off(tmp_path: Path, capsys) -> None:
    running, agent = _reload(tmp_path, "watch_window: 0\n", "watch_window: 5\n")
    assert running.watch is not None and agent.watch is running.watch
    assert running.watch.config.window == 5
    assert "configuration reloaded (watch_window)" in capsys.readouterr().err


def test_a_bad_recordings_dir_at_reload_keeps_the_running_watch(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    running, _ = _reload(
        tmp_path,
        "watch_window: 20\nburst_budget: 5\n",
        f"watch_window: 8\nburst_budget: 9\nrecordings_dir: {blocker / 'rec'}\n",
    )
    assert running.watch is not None and running.watch.config.window == 20
    assert running.watch.burst.budget_pct == 5.0 and running.settings.burst_budget == 5.0
    err = capsys.readouterr().err
    assert "configuration not reloaded, the running one is kept: --recordings-dir" in err
