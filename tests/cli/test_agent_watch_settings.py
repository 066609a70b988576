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
