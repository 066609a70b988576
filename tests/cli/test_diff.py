"""`otlp-ebpf diff` end to end: files in, table/JSON/verdict out, exit codes for CI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from otlp_ebpf.cli.app import run
from otlp_ebpf.model import CpuSnapshot, Snapshot, StackCount, SyscallsSnapshot, write_snapshot


def sampled_cpu(hot_weight: float, samples: int, seed: int) -> CpuSnapshot:
    paths = {
        ("main", "work", "hot"): hot_weight,
        ("main", "work", "cold"): 1.0,
        ("main", "parse"): 0.3,
        ("main", "[unknown]"): 0.02,
    }
    rng = random.Random(seed)
    counts: dict[tuple[str, ...], int] = {}
    for path in rng.choices(list(paths), weights=list(paths.values()), k=samples):
        counts[path] = counts.get(path, 0) + 1
    return CpuSnapshot(
        started_at="2026-01-01T00:00:00Z",
        duration_s=3.0,
        host="ci",
        samples_total=samples,
        stacks=tuple(StackCount(9, 9, "bench", p, n) for p, n in sorted(counts.items())),
    )


def save(snapshot: Snapshot, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        write_snapshot(snapshot, fh)
    return str(path)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[str, str]:
    """A base run and a new run whose hot function takes twice the weight."""
    return (
        save(sampled_cpu(1.0, 1000, 1), tmp_path / "base.json"),
        save(sampled_cpu(2.0, 1000, 2), tmp_path / "new.json"),
    )


def test_regression_beyond_threshold_exits_1_with_verdict_on_stderr(
    pair: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(["diff", *pair, "--fail-on-regression", "5"])
    captured = capsys.readouterr()
    assert code == 1
    assert "REGRESSION: hot self" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert "hot" in captured.out and "REGRESSION" in captured.out


def test_growth_within_threshold_exits_0_and_says_why(
    pair: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["diff", *pair, "--fail-on-regression", "40"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("OK: largest growth hot")


def test_without_gate_the_verdict_still_explains(
    pair: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["diff", *pair]) == 0
    assert capsys.readouterr().err.startswith("no gate (--fail-on-regression not set)")


def test_json_document_on_stdout(pair: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["diff", *pair, "--json", "--fail-on-regression", "5"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["verdict"] == "fail"
    assert document["regressions"][0]["key"] == "hot"
    assert {"before", "after", "delta", "ci", "p_value"} <= set(document["sections"][0]["rows"][0])


def test_outputs_written_by_extension(
    pair: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    names = ["d.html", "d.svg", "d.folded", "d.md", "d.json"]
    args = [arg for n in names for arg in ("-o", str(out / n))]
    assert run(["diff", *pair, *args, "--reverse"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    folded = (out / "d.folded").read_text().splitlines()
    assert any(line.startswith("bench;main;work;hot ") for line in folded)
    assert all(len(line.rsplit(" ", 2)) == 3 for line in folded)
    assert (out / "d.md").read_text().startswith("## ℹ️ Profile diff (cpu): NO-GATE")
    assert json.loads((out / "d.json").read_text())["verdict"] == "no-gate"
    assert (out / "d.svg").read_text().startswith("<?xml")
    assert "widths: BASE" in (out / "d.html").read_text()
    assert "wrote" in capsys.readouterr().err


def test_several_runs_per_side_from_directories_and_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [save(sampled_cpu(1.0, 400, s), tmp_path / "base" / f"{s}.json") for s in range(4)]
    for s in range(4):
        save(sampled_cpu(2.0, 400, 10 + s), tmp_path / "new" / f"{s}.json")
    code = run(["diff", ",".join(base), str(tmp_path / "new"), "--fail-on-regression", "5"])
    captured = capsys.readouterr()
    assert code == 1
    assert "mann-whitney" in captured.out
    assert "REGRESSION: hot" in captured.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fail-on-regression", "-1"], "must be 0 or more"),
        (["--fail-on-regression", "nan"], "--fail-on-regression must be 0 or more"),
        (["--confidence", "1.5"], "--confidence"),
        (["-o", "x.png"], "cannot tell the format"),
        (["--metric", "p99"], "use one of: self, total"),
        (["--profile", "off_cpu"], "no profile off_cpu"),
        (["--top", "-1"], "--top must be 0 (every row)"),
    ],
)
def test_bad_options_exit_2(
    pair: tuple[str, str], extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["diff", *pair, *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_corrupt_and_mixed_inputs_exit_2(
    pair: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"kind": "cpu", "vers')
    syscalls = save(SyscallsSnapshot(started_at="t", duration_s=1, host="h"), tmp_path / "s.json")
    assert run(["diff", pair[0], str(tmp_path / "absent.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert run(["diff", pair[0], str(corrupt)]) == 2
    assert "not a JSON snapshot" in capsys.readouterr().err
    assert run(["diff", pair[0], syscalls]) == 2
    assert "cannot compare a cpu snapshot with a syscalls snapshot" in capsys.readouterr().err
    assert run(["diff", syscalls, syscalls, "-o", str(tmp_path / "x.svg")]) == 2
    assert "have no stacks" in capsys.readouterr().err


def test_unwritable_output_is_a_usage_error(
    pair: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["diff", *pair, "-o", str(tmp_path / "missing-dir" / "d.md")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_flamegraph_title_names_both_sides(tmp_path: Path) -> None:
    for s in range(3):
        save(sampled_cpu(1.0, 200, s), tmp_path / "base" / f"{s}.json")
    head = save(sampled_cpu(2.0, 200, 9), tmp_path / "head.json")
    out = tmp_path / "d.svg"
    assert run(["diff", str(tmp_path / "base"), head, "-o", str(out)]) == 0
    assert f"{tmp_path / 'base'}/ (3 runs) -&gt; {head}" in out.read_text()
