from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings

from otlp_ebpf.formatters import speedscope
from otlp_ebpf.formatters.flametree import comm_label
from otlp_ebpf.model import CpuSnapshot, StackProfile
from tests.formatters.formatter_fixtures import cpu_snapshot, mem_snapshot, stack_profiles_strategy

SPEEDSCOPE_PACKAGE = "speedscope@1.25.0"
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "speedscope"
SCHEMA_MEMBER = "package/dist/release/file-format-schema.json"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """The schema the speedscope project publishes with its npm package (fetched once)."""
    path = CACHE / "file-format-schema.json"
    if not path.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed to fetch the speedscope schema (Makefile installs it)"
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [npm, "pack", SPEEDSCOPE_PACKAGE, "--silent", "--pack-destination", str(CACHE)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        tarball = CACHE / done.stdout.strip().splitlines()[-1]
        with tarfile.open(tarball) as archive:
            member = archive.extractfile(SCHEMA_MEMBER)
            assert member is not None
            path.write_bytes(member.read())
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def document(snapshot: CpuSnapshot | Any) -> dict[str, Any]:
    stream = io.BytesIO()
    speedscope.render(snapshot, stream)
    loaded: dict[str, Any] = json.loads(stream.getvalue().decode("utf-8"))
    return loaded


def check_indices(doc: dict[str, Any]) -> None:
    """What the schema cannot say: every sample names existing frames, weights line up."""
    frame_count = len(doc["shared"]["frames"])
    for profile in doc["profiles"]:
        assert len(profile["samples"]) == len(profile["weights"])
        assert profile["endValue"] == sum(profile["weights"])
        for sample in profile["samples"]:
            assert all(isinstance(i, int) and 0 <= i < frame_count for i in sample)


def stacks_of(doc: dict[str, Any], index: int) -> Counter[tuple[str, ...]]:
    frames = doc["shared"]["frames"]
    profile = doc["profiles"][index]
    result: Counter[tuple[str, ...]] = Counter()
    for sample, weight in zip(profile["samples"], profile["weights"], strict=True):
        result[tuple(frames[i]["name"] for i in sample)] += weight
    return result


def test_cpu_file_holds_on_and_off_cpu_profiles(schema: dict[str, Any]) -> None:
    doc = document(cpu_snapshot())

    jsonschema.validate(doc, schema)
    check_indices(doc)
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    assert [(p["name"], p["unit"]) for p in doc["profiles"]] == [
        ("cpu", "none"),
        ("off_cpu", "nanoseconds"),
    ]
    assert stacks_of(doc, 0)[("app", "_start", "main", "compute", "inner")] == 15
    assert stacks_of(doc, 1)[("db", "run", "poll")] == 1_000_000
    names = [f["name"] for f in doc["shared"]["frames"]]
    assert len(names) == len(set(names))  # shared between the two profiles


def test_memory_profiles_are_bytes_and_objects_with_modules_as_files(
    schema: dict[str, Any],
) -> None:
    doc = document(mem_snapshot())

    jsonschema.validate(doc, schema)
    check_indices(doc)
    assert [p["unit"] for p in doc["profiles"]] == ["bytes", "none"]
    assert stacks_of(doc, 0)[("srv", "main", "load", "malloc")] == 4096
    assert {"name": "malloc", "file": "libc.so.6"} in doc["shared"]["frames"]


def test_empty_snapshot_is_still_a_valid_file(schema: dict[str, Any]) -> None:
    doc = document(CpuSnapshot(started_at="t", duration_s=0.0, host="h"))

    jsonschema.validate(doc, schema)
    assert doc["profiles"][0]["samples"] == []


@settings(max_examples=60, deadline=None)
@given(stack_profiles_strategy("nanoseconds"))
def test_round_trip_keeps_names_and_weights_exactly(
    schema: dict[str, Any], profile: StackProfile
) -> None:
    snapshot = CpuSnapshot(started_at="t", duration_s=1.0, host="h", off_cpu=profile.stacks)
    # Without on-CPU stacks the snapshot's only profile is the off-CPU one.
    doc = document(snapshot)

    jsonschema.validate(doc, schema)
    check_indices(doc)
    expected: Counter[tuple[str, ...]] = Counter()
    for stack in profile.stacks:
        if stack.total_ns > 0:
            expected[(comm_label(stack), *stack.frames)] += stack.total_ns
    assert stacks_of(doc, 0) == expected
