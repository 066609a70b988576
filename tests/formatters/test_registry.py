from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest

from otlp_ebpf.errors import RuntimeFailure, UsageError
from otlp_ebpf.formatters import registry
from otlp_ebpf.formatters.registry import (
    check_supported,
    format_for_path,
    render,
    sibling_path,
    write_output,
)
from otlp_ebpf.model import snapshot_from_dict
from tests.formatters.formatter_fixtures import cpu_snapshot, mem_snapshot, syscalls_snapshot


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("flame.html", "html"),
        ("flame.svg", "svg"),
        ("out.folded", "folded"),
        ("out.speedscope.json", "speedscope"),
        ("OUT.SPEEDSCOPE.JSON", "speedscope"),
        ("snap.json", "json"),
        ("/tmp/x/cpu.pb.gz", "pprof"),
        ("batch.otlp.pb", "otlp"),
    ],
)
def test_extension_selects_format(path: str, name: str) -> None:
    assert format_for_path(path).name == name


def test_otlp_points_at_the_request_encoder_module() -> None:
    assert format_for_path("x.otlp.pb").module == "otlp_ebpf.formatters.otlp_request"


def test_forced_format_wins_over_extension() -> None:
    assert format_for_path("out.txt", forced="folded").name == "folded"
    assert format_for_path("out.json", forced="SVG").name == "svg"


def test_unknown_extension_names_the_known_ones() -> None:
    with pytest.raises(UsageError) as caught:
        format_for_path("out.txt")
    assert caught.value.exit_code == 2
    assert "out.txt" in caught.value.message
    for ext in (".html", ".speedscope.json", ".pb.gz", ".otlp.pb", "--format"):
        assert ext in caught.value.message


def test_unknown_forced_format_names_the_known_ones() -> None:
    with pytest.raises(UsageError, match="known formats: html, svg, folded"):
        format_for_path("out.html", forced="png")


def test_stack_formats_refuse_table_only_kinds_and_say_what_fits() -> None:
    with pytest.raises(UsageError) as caught:
        check_supported(format_for_path("x.svg"), "syscalls")
    assert caught.value.message == (
        "svg needs stacks; syscalls snapshots have none (use .json or .otlp.pb)"
    )
    check_supported(format_for_path("x.json"), "net")
    check_supported(format_for_path("x.pb.gz"), "mem")


def test_unknown_kind_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown snapshot kind"):
        check_supported(format_for_path("x.svg"), "gpu")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("out.folded", "out.off_cpu.folded"),
        ("dir.v2/out.pb.gz", "dir.v2/out.off_cpu.pb.gz"),
        ("out.FOLDED", "out.off_cpu.FOLDED"),
        ("out", "out.off_cpu"),
    ],
)
def test_sibling_names_go_before_the_extension(path: str, expected: str) -> None:
    fmt = format_for_path(path, forced="pprof" if "pb" in path else "folded")
    assert sibling_path(path, fmt, "off_cpu") == expected
    assert sibling_path(path, fmt, "") == path


def test_json_renders_a_snapshot_that_reads_back_equal() -> None:
    snapshot = cpu_snapshot()
    stream = io.BytesIO()

    render(snapshot, format_for_path("s.json"), stream)

    assert not stream.closed
    assert snapshot_from_dict(json.loads(stream.getvalue().decode("utf-8"))) == snapshot


def test_json_fits_table_only_kinds() -> None:
    stream = io.BytesIO()
    render(syscalls_snapshot(), format_for_path("s.json"), stream)
    assert json.loads(stream.getvalue())["syscalls"][0]["name"] == "read"


def test_render_refuses_unsupported_pairs() -> None:
    with pytest.raises(UsageError):
        render(syscalls_snapshot(), format_for_path("s.folded"), io.BytesIO())


def test_single_profile_formats_write_one_file_per_profile(tmp_path: Path) -> None:
    target = tmp_path / "cpu.folded"

    written = write_output(cpu_snapshot(), str(target), format_for_path(str(target)))

    assert written == [str(target), str(tmp_path / "cpu.off_cpu.folded")]
    assert "app;_start;main;compute 60\n" in target.read_text()
    assert (tmp_path / "cpu.off_cpu.folded").read_text().endswith("db;run;poll 1000000\n")
    assert sorted(os.listdir(tmp_path)) == ["cpu.folded", "cpu.off_cpu.folded"]


def test_multi_profile_formats_write_one_file(tmp_path: Path) -> None:
    for name in ("m.html", "m.speedscope.json", "m.json"):
        path = str(tmp_path / name)
        assert write_output(mem_snapshot(), path, format_for_path(path)) == [path]


def test_write_replaces_an_existing_file_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "snap.json"
    target.write_text("old")

    write_output(cpu_snapshot(), str(target), format_for_path(str(target)))

    assert json.loads(target.read_text())["kind"] == "cpu"
    assert os.listdir(tmp_path) == ["snap.json"]


def test_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    path = str(tmp_path / "nope" / "out.folded")
    with pytest.raises(UsageError, match=r"nope/out\.folded: cannot write: No such file"):
        write_output(cpu_snapshot(), path, format_for_path(path))


def test_a_failing_writer_keeps_the_old_file_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "out.folded"
    target.write_text("old\n")

    def explode(stream: object) -> None:
        raise ValueError("renderer bug")

    with pytest.raises(ValueError):
        registry.write_atomically(str(target), explode)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.folded"]


def test_a_full_disk_is_a_runtime_failure_not_a_usage_error() -> None:
    error = registry._write_error("x", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(error, RuntimeFailure)
    assert error.message == "x: cannot write: No space left on device"
