"""Real signals sent to this process while a file is being written."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from otlp_ebpf import stopping
from otlp_ebpf.formatters import registry


@pytest.fixture
def handlers() -> Iterator[None]:
    assert stopping.install()
    yield
    stopping.uninstall()


def writer_signalled(times: int) -> Callable[[BinaryIO], None]:
    def write(stream: BinaryIO) -> None:
        stream.write(b"first half\n")
        for _ in range(times):
            os.kill(os.getpid(), signal.SIGTERM)
        stream.write(b"second half\n")

    return write


def test_a_collecting_run_finishes_the_file_through_a_second_signal(
    handlers: None, tmp_path: Path
) -> None:
    stopping.graceful(True)

    registry.write_atomically(str(tmp_path / "out.folded"), writer_signalled(2))

    assert (tmp_path / "out.folded").read_bytes() == b"first half\nsecond half\n"
    assert stopping.received() == signal.SIGTERM


def test_a_third_signal_abandons_the_file_and_leaves_no_temporary(
    handlers: None, tmp_path: Path
) -> None:
    stopping.graceful(True)
    (tmp_path / "out.folded").write_bytes(b"old\n")

    with pytest.raises(stopping.Interrupted) as caught:
        registry.write_atomically(str(tmp_path / "out.folded"), writer_signalled(3))

    assert caught.value.exit_code == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == ["out.folded"]
    assert (tmp_path / "out.folded").read_bytes() == b"old\n"


def test_other_commands_stop_once_the_file_is_whole(handlers: None, tmp_path: Path) -> None:
    stopping.graceful(False)

    with pytest.raises(stopping.Interrupted):
        registry.write_atomically(str(tmp_path / "out.folded"), writer_signalled(1))

    assert (tmp_path / "out.folded").read_bytes() == b"first half\nsecond half\n"


def test_a_signal_during_start_up_is_kept_for_the_command(handlers: None) -> None:
    os.kill(os.getpid(), signal.SIGINT)  # before the command is known: only noted
    assert stopping.received() == signal.SIGINT
    with pytest.raises(stopping.Interrupted):
        stopping.graceful(False)  # a command with nothing to finish stops right away
