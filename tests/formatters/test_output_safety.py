"""Outputs another user cannot redirect, that a full disk does not cost the others, created
readable by their owner only. Another user is real: `nobody` through setpriv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from otlp_ebpf.cli.app import run
from otlp_ebpf.cli.common import check_output_path
from otlp_ebpf.errors import UsageError
from otlp_ebpf.formatters import registry
from otlp_ebpf.model import CpuSnapshot, StackCount
from tests.formatters.formatter_fixtures import COMMON, cpu_snapshot

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def as_nobody(*argv: str) -> None:
    """Run a command as another, unprivileged user."""
    subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv], check=True
    )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A world-writable sticky directory like /tmp, reachable by every user."""
    path = Path(tempfile.mkdtemp(prefix="otlp-ebpf-shared-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


def test_a_symlink_of_another_user_is_refused_when_writing(shared_dir: Path) -> None:
    victim = shared_dir / "roots-file"
    victim.write_text("keep me\n")
    out = shared_dir / "out.json"
    check_output_path(str(out))  # nothing there yet: fine before collecting
    as_nobody("ln", "-s", str(victim), str(out))  # ...then another user plants a link

    with pytest.raises(UsageError, match=r"symlink owned by another user \(uid 65534\)"):
        registry.write_output(cpu_snapshot(), str(out), registry.format_for_path(str(out)))

    assert victim.read_text() == "keep me\n"
    assert out.is_symlink()
    assert sorted(p.name for p in shared_dir.iterdir()) == ["out.json", "roots-file"]


def test_a_symlink_in_the_other_users_own_directory_is_refused_too(shared_dir: Path) -> None:
    theirs = shared_dir / "theirs"
    as_nobody("mkdir", "-m", "0755", str(theirs))
    victim = shared_dir / "roots-file"
    victim.write_text("keep me\n")
    as_nobody("ln", "-s", str(victim), str(theirs / "flame.folded"))

    with pytest.raises(UsageError, match="symlink owned by another user"):
        check_output_path(str(theirs / "flame.folded"))
    with pytest.raises(UsageError, match="symlink owned by another user"):
        registry.write_atomically(str(theirs / "flame.folded"), lambda s: s.write(b"a 1\n"))
    assert victim.read_text() == "keep me\n"


def test_a_link_chain_through_another_users_link_is_refused(shared_dir: Path) -> None:
    victim = shared_dir / "roots-file"
    victim.write_text("keep me\n")
    as_nobody("ln", "-s", str(victim), str(shared_dir / "theirs.json"))
    (shared_dir / "mine.json").symlink_to(shared_dir / "theirs.json")

    with pytest.raises(UsageError, match=r"theirs\.json: refusing"):
        registry.write_atomically(str(shared_dir / "mine.json"), lambda s: s.write(b"{}"))
    assert victim.read_text() == "keep me\n"


def test_an_own_symlink_is_followed(tmp_path: Path) -> None:
    target = tmp_path / "real.folded"
    (tmp_path / "link.folded").symlink_to("real.folded")

    registry.write_atomically(str(tmp_path / "link.folded"), lambda s: s.write(b"a;b 1\n"))

    assert target.read_bytes() == b"a;b 1\n"
    assert (tmp_path / "link.folded").is_symlink()


def test_outputs_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        for name in ("s.json", "s.folded", "s.html", "s.otlp.pb"):
            path = str(tmp_path / name)
            for written in registry.write_output(
                cpu_snapshot(), path, registry.format_for_path(path)
            ):
                assert os.stat(written).st_mode & 0o777 == 0o600, written
    finally:
        os.umask(old)


def big_snapshot(path: Path) -> Path:
    """A snapshot file larger than the 64 KiB disk."""
    stacks = tuple(
        StackCount(1, 1, "app", ("main", f"function_{i:05d}"), i + 1) for i in range(2000)
    )
    snap = CpuSnapshot(**COMMON, stacks=stacks, samples_total=sum(s.count for s in stacks))
    path.write_text(json.dumps(snap.to_dict()))
    return path


def test_a_full_disk_costs_only_its_own_output(
    tmp_path: Path, full_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = big_snapshot(tmp_path / "in.json")
    lost, kept = full_disk / "x.json", tmp_path / "ok.json"

    code = run(["report", str(snap), "-o", str(lost), "-o", str(kept), "--top", "3"])

    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(kept.read_text())["kind"] == "cpu"
    assert "function_01999" in captured.out  # the table is still printed
    assert f"{lost}: cannot write: No space left on device" in captured.err
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # no temporary left


def test_every_failure_is_named_at_the_end(
    tmp_path: Path, full_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = big_snapshot(tmp_path / "in.json")
    args = ["report", str(snap), "-o", str(full_disk / "a.json"), "-o", str(tmp_path / "b.json")]

    assert run([*args, "-o", str(full_disk / "c.folded"), "--top", "1"]) == 1

    err = capsys.readouterr().err
    assert "2 outputs failed" in err and "a.json" in err and "c.folded" in err
    assert (tmp_path / "b.json").exists()
