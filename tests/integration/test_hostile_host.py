"""What other users and hostile processes on the host can do to a root run: plant symlinks
while it runs, name processes with bytes that are not UTF-8, put terminal escapes in names.
Another user is real (`nobody` through setpriv); the runs are real BPF runs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from otlp_ebpf.cli.app import run

pytestmark = pytest.mark.bpf

AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A world-writable sticky directory like /tmp, reachable by every user."""
    path = Path(tempfile.mkdtemp(prefix="otlp-ebpf-shared-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


def test_a_symlink_planted_during_the_run_is_not_written_through(
    shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = shared_dir / "roots-file"
    victim.write_text("keep me\n")
    out, ok = shared_dir / "out.json", shared_dir / "ok.json"
    # The traced command is the other user planting the link: after the start-up checks,
    # before the outputs are written.
    plant = [*AS_NOBODY, "ln", "-s", str(victim), str(out)]

    code = run(["syscalls", "-o", str(out), "-o", str(ok), "--", *plant])

    err = capsys.readouterr().err
    assert code == 2
    assert victim.read_text() == "keep me\n"
    assert out.is_symlink() and os.readlink(out) == str(victim)
    assert "refusing to write through a symlink owned by another user" in err
    assert json.loads(ok.read_text())["kind"] == "syscalls"  # the other output is written
    assert sorted(p.name for p in shared_dir.iterdir()) == ["ok.json", "out.json", "roots-file"]


def test_a_full_disk_costs_only_its_own_output(
    tmp_path: Path, full_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lost, kept = full_disk / "x.json", tmp_path / "ok.json"

    code = run(["syscalls", "-o", str(lost), "-o", str(kept), "--", "true"])

    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(kept.read_text())["kind"] == "syscalls"
    assert "execve" in captured.out  # the table is printed
    assert f"{lost}: cannot write: No space left on device" in captured.err
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
