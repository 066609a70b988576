"""What other users and hostile processes on the host can do to a root run: plant symlinks
while it runs, name processes with bytes that are not UTF-8, put terminal escapes in names.
Another user is real (`nobody` through setpriv); the runs are real BPF runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otlp_ebpf.cli.app import run
from tests.conftest import build_c

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


# Names itself with bytes that are not UTF-8 (and a terminal escape when asked), then keeps a
# CPU busy with syscalls for argv[1] ms: seen by system-wide runs of every collector.
HOSTILE = r"""
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>
static double now(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
int main(int argc, char **argv) {
    double until = now() + (argc > 1 ? atoi(argv[1]) : 1000) / 1000.0;
    if (argc > 2) prctl(PR_SET_NAME, argv[2], 0, 0, 0);
    volatile unsigned long sink = 0;
    while (now() < until) { getppid(); for (int i = 0; i < 20000; i++) sink += i; }
    return 0;
}
"""
EVIL = b"evil\xff\xfe"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, cc: str) -> Path:
    """The workload, copied under a name that is not UTF-8, where `nobody` can run it."""
    folder = Path(tempfile.mkdtemp(prefix="otlp-ebpf-hostile-", dir="/tmp"))
    folder.chmod(0o755)
    built = build_c(cc, HOSTILE, tmp_path_factory.mktemp("hostile") / "hostile", "-O1")
    evil = os.path.join(os.fsencode(folder), EVIL)
    shutil.copy(built, evil)
    os.chmod(evil, 0o755)
    yield Path(os.fsdecode(evil))
    shutil.rmtree(folder)


@pytest.fixture
def other_users_process(hostile: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another user runs the hostile program (argument bytes not UTF-8 either) until the test
    is over; returned once it has named itself."""
    argv = [*AS_NOBODY, os.fsencode(hostile), b"600000", EVIL, b"--password=hunter\xff2"]
    proc = subprocess.Popen(argv)
    comm = f"/proc/{proc.pid}/comm"
    while proc.poll() is None and Path(comm).read_bytes() != EVIL + b"\n":
        time.sleep(0.01)
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize(("collector", "table"), [("syscalls", "-P"), ("cpu", "--top=1")])
def test_a_process_name_that_is_not_utf8_is_kept_system_wide(
    collector: str,
    table: str,
    other_users_process: subprocess.Popen[bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "snap.json"

    otlp = str(tmp_path / "s.otlp.pb")
    code = run([collector, table, "-d", "0.5", "-o", str(out), "-o", otlp])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    snap = json.loads(out.read_text())
    rows = snap["syscalls"] if collector == "syscalls" else snap["stacks"]
    assert "evil\\xff\\xfe" in {r["comm"] for r in rows if r["pid"] == other_users_process.pid}
    if collector == "syscalls":
        assert "evil\\xff\\xfe" in captured.out  # the table shows it, escaped


def test_a_launched_command_with_such_bytes_fills_every_output(
    hostile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(hostile), "300", os.fsdecode(b"arg\xfe")]
    outputs = [str(tmp_path / n) for n in ("x.json", "x.html", "x.folded", "x.otlp.pb")]

    code = run(["cpu", *(a for o in outputs for a in ("-o", o)), "--", *argv])

    assert code == 0, capsys.readouterr().err
    snap = json.loads((tmp_path / "x.json").read_text())
    shown = os.fsencode(hostile).decode("utf-8", "backslashreplace")  # .../evil\\xff\\xfe
    assert snap["targets"] == [f"command: {shown} 300 arg\\xfe"]
    (info,) = snap["processes"]
    # It names itself after its argument once started; a sample taken in the dynamic loader
    # (likelier on a loaded machine) sees it still named after its file.
    assert info["comm"] in ("arg\\xfe", "evil\\xff\\xfe")
    assert info["exe"] == shown
    assert "arg\\xfe" in (tmp_path / "x.html").read_text()
    folded = (tmp_path / "x.folded").read_text().splitlines()
    assert any(line.startswith("arg\\xfe;") for line in folded), folded


def test_a_comm_filter_with_such_bytes_matches_the_process(
    hostile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(hostile), "200", os.fsdecode(EVIL)]

    code = run(["syscalls", "--json", "--comm", os.fsdecode(EVIL), "--", *argv])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads(captured.out)["syscalls"]
    assert rows and {r["comm"] for r in rows} == {"evil\\xff\\xfe"}


def test_terminal_escapes_in_a_process_name_are_shown_not_obeyed(
    hostile: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    title_and_clear = hostile.parent / "\x1b]0;OWNED\x07\x1b[2J"  # fits the 15 bytes of a comm
    shutil.copy(hostile, title_and_clear)

    code = run(["syscalls", "-P", "--", str(title_and_clear), "100"])

    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert "\\x1b]0;OWNED\\x07\\x1b[2J" in captured.out
    assert "\x1b" not in captured.out + captured.err and "\x07" not in captured.out


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ([], ["--password=***"]),
        (["--cmdline", "full"], ["--password=hunter\\xff2"]),
        (["--cmdline", "omit"], None),
    ],
    ids=["default-redact", "full", "omit"],
)
def test_other_users_command_lines_are_redacted_by_default(
    policy: list[str],
    expected: list[str] | None,
    other_users_process: subprocess.Popen[bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    snap, request = tmp_path / "cpu.json", tmp_path / "cpu.otlp.pb"

    code = run(["cpu", *policy, "-d", "0.5", "-o", str(snap), "-o", str(request)])

    assert code == 0, capsys.readouterr().err
    (info,) = [
        p for p in json.loads(snap.read_text())["processes"] if p["pid"] == other_users_process.pid
    ]
    assert info["cmdline"][-1:] == (expected or [])
    if expected != ["--password=hunter\\xff2"]:
        assert b"hunter" not in snap.read_bytes() + request.read_bytes()
    else:
        assert b"--password=hunter\\xff2" in request.read_bytes()  # in the OTLP resource
    assert os.stat(snap).st_mode & 0o777 == 0o600


def test_a_launched_commands_secrets_are_redacted_in_its_target(
    hostile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = tmp_path / "s.json"

    code = run(["syscalls", "-o", str(snap), "--", str(hostile), "50", "x", "--token", "abc123"])

    assert code == 0, capsys.readouterr().err
    (target,) = json.loads(snap.read_text())["targets"]
    assert target.endswith(" 50 x --token ***")
    assert "abc123" not in snap.read_text()


# A Python function whose name holds a lone surrogate and a terminal escape: spins for
# argv[1] seconds of CPU time.
HOSTILE_PYTHON = """\
import sys
import time


def spin(stop):
    while time.thread_time() < stop:
        pass


NAME = "evil\\udcff\\x1b[2J"
spin.__code__ = spin.__code__.replace(co_name=NAME, co_qualname=NAME)
spin(time.thread_time() + float(sys.argv[1]))
"""


def test_a_python_function_name_no_output_can_encode_is_kept_escaped(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "app.py"
    app.write_text(HOSTILE_PYTHON)
    snap = tmp_path / "py.json"

    code = run(
        [
            "cpu",
            "--top",
            "50",
            "-o",
            str(snap),
            "-o",
            str(tmp_path / "py.html"),
            "--",
            sys.executable,
            str(app),
            "1.0",  # CPU seconds: enough samples after the interpreter is found
        ]
    )

    captured = capfd.readouterr()
    assert code == 0, captured.err
    frames = {f for s in json.loads(snap.read_text())["stacks"] for f in s["frames"]}
    assert any(f.startswith("app.evil\\udcff\x1b[2J") for f in frames)
    assert "app.evil\\udcff\\x1b[2J" in captured.out and "\x1b" not in captured.out
