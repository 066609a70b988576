import pytest

from otlp_ebpf import __version__
from otlp_ebpf.cli.app import run
from otlp_ebpf.cli.common import check_output_path, summary_line, target_spec
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import CpuSnapshot, SelfCost


def test_the_version_is_written_once_and_the_metadata_carries_it():
    import re
    from importlib.metadata import version
    from pathlib import Path

    assert version("otlp-ebpf") == __version__
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert not re.search(r"^version\s*=", pyproject, re.MULTILINE)


def test_version_and_help(capsys):
    assert run(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    assert "doctor" in out and "syscalls" in out


def test_unknown_command_and_option_exit_2(capsys):
    assert run(["no-such-command"]) == 2
    assert run(["syscalls", "--no-such-option"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_bad_duration_is_a_usage_error(capsys):
    assert run(["syscalls", "-d", "-1"]) == 2
    assert "--duration must be a positive number" in capsys.readouterr().err


def test_unknown_syscall_lists_close_matches(capsys):
    assert run(["syscalls", "--syscall", "opena", "-d", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown syscall 'opena'" in err and "openat" in err


def test_pid_and_command_together_are_refused():
    with pytest.raises(UsageError, match="either --pid or -- CMD"):
        target_spec([1], 0, ["true"])


def test_output_path_checks(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        check_output_path(str(tmp_path / "nope" / "x.json"))
    with pytest.raises(UsageError, match="is a directory"):
        check_output_path(str(tmp_path))
    check_output_path(str(tmp_path / "fine.json"))


def test_summary_line_accounts_for_losses_and_cost():
    snap = CpuSnapshot(
        started_at="t",
        duration_s=2.0,
        host="h",
        lost_events={"ring buffer full": 5},
        self_cost=SelfCost(cpu_s=0.1, bpf_ns=2_000_000, bpf_runs=40, peak_rss_kb=2048),
    )
    line = summary_line(snap, 1234, "samples")
    assert "1,234 samples" in line and "5 lost (ring buffer full: 5)" in line
    assert "5.0%" in line and "BPF 2.0 ms in 40 runs" in line and "2.0 MB" in line


def test_bare_otlp_flag_takes_the_endpoint_from_the_environment():
    from otlp_ebpf.cli.app import optional_otlp_value

    assert optional_otlp_value(["net", "--otlp"]) == ["net", "--otlp=@env"]
    assert optional_otlp_value(["net", "--otlp", "-d", "1"]) == ["net", "--otlp=@env", "-d", "1"]
    assert optional_otlp_value(["net", "--otlp", "http://c:4317"]) == [
        "net",
        "--otlp",
        "http://c:4317",
    ]
    assert optional_otlp_value(["cpu", "--", "prog", "--otlp"]) == ["cpu", "--", "prog", "--otlp"]


def test_outputs_on_unwritable_filesystems_are_refused_before_collecting():
    # root passes every access() check; the probe file tells the truth.
    with pytest.raises(UsageError, match="cannot write in /proc"):
        check_output_path("/proc/flame.html")


def test_missing_pids_and_threads_are_refused_up_front():
    with pytest.raises(UsageError, match="no such process: 999999999"):
        target_spec([999999999], 0, None)
    with pytest.raises(UsageError, match="no such thread"):
        target_spec(None, 999999999, None)


def test_outputs_follow_symlinks_and_write_devices_in_place(tmp_path):
    import os
    import threading

    from otlp_ebpf.formatters.registry import write_atomically

    target = tmp_path / "real.folded"
    link = tmp_path / "link.folded"
    link.symlink_to(target)
    check_output_path(str(link))
    write_atomically(str(link), lambda s: s.write(b"a;b 1\n"))
    assert link.is_symlink() and target.read_bytes() == b"a;b 1\n"

    fifo = tmp_path / "pipe.folded"
    os.mkfifo(fifo)
    check_output_path(str(fifo))
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_atomically(str(fifo), lambda s: s.write(b"x 2\n"))
    reader.join(5)
    assert got == [b"x 2\n"]
    assert not fifo.is_file() and fifo.exists()  # still a FIFO, not replaced by a file


def test_an_internal_error_is_one_short_line(tmp_path, monkeypatch, capsys):
    import json

    from otlp_ebpf.cli import report
    from otlp_ebpf.cli.app import run
    from tests.formatters.formatter_fixtures import cpu_snapshot

    snap = tmp_path / "s.json"
    snap.write_text(json.dumps(cpu_snapshot().to_dict()))

    def page_in_message(*_args: object, **_kwargs: object) -> None:
        raise UnicodeEncodeError("utf-8", "<html>" + "x" * 100_000, 6, 7, "surrogates")

    monkeypatch.setattr(report, "read_snapshot", page_in_message)
    assert run(["report", str(snap)]) == 1
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "internal error" in ln]
    assert len(line) < 400 and line.endswith("(rerun with --debug)")


def test_help_lists_collectors_then_snapshot_readers_then_the_rest(capsys):
    from otlp_ebpf.cli.app import COMMAND_MODULES

    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    listed = [name for name in COMMAND_MODULES if f" {name} " in out]
    assert sorted(listed, key=out.index) == COMMAND_MODULES
    assert COMMAND_MODULES[:4] == ["cpu", "syscalls", "net", "mem"]
    assert COMMAND_MODULES.index("report") < COMMAND_MODULES.index("diff")
    assert COMMAND_MODULES[-1] == "doctor"


def test_quiet_works_after_the_command_name(tmp_path, capsys):
    from otlp_ebpf.model import write_snapshot

    path = tmp_path / "s.json"
    with path.open("w") as fh:
        write_snapshot(CpuSnapshot(started_at="t", duration_s=1.0, host="h"), fh)
    assert run(["report", str(path)]) == 0
    assert "samples" in capsys.readouterr().err  # the summary line
    for argv in (
        ["-q", "report", str(path)],
        ["report", str(path), "-q"],
        ["report", "--quiet", str(path)],
    ):
        assert run(argv) == 0, argv
        assert capsys.readouterr().err == "", argv


def test_global_flags_after_the_separator_belong_to_the_launched_command():
    from otlp_ebpf.cli.app import global_flags_first

    assert global_flags_first(["cpu", "-d", "1", "-q"]) == ["-q", "cpu", "-d", "1"]
    assert global_flags_first(["cpu", "--debug", "--", "grep", "-q", "x"]) == [
        "--debug",
        "cpu",
        "--",
        "grep",
        "-q",
        "x",
    ]
    assert global_flags_first(["-q", "cpu"]) == ["-q", "cpu"]
