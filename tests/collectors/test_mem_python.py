"""Python frames in mem stacks: allocations of an unmodified CPython carry the Python
functions that made them, on every installed version.

The workload keeps 50 blocks of 200,000 bytes made in `big` and 50 of 100,000 made in
`small` (bytearrays: one allocator call each), then ends without freeing them (os._exit, so
interpreter finalization does not free them first): `big` holds 2/3 of those bytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from otlp_ebpf.collectors.mem import MemConfig, collect
from otlp_ebpf.collectors.mem_python import NATIVE_END, split_stack
from otlp_ebpf.model import MemSnapshot
from otlp_ebpf.targets import TargetSpec
from tests.collectors.test_python_frames import VERSIONS, interpreter

APP = """\
import os
import time

KEEP = []


def big():
    KEEP.append(bytearray(200_000))


def small():
    KEEP.append(bytearray(100_000))


def main():
    for _ in range(50):
        big()
        small()


main()
time.sleep(0.3)
os._exit(0)
"""
BIG_LINE, SMALL_LINE = 8, 12
BLOCKS, BIG, SMALL = 50, 200_000, 100_000
# A bytearray's buffer is its size plus a terminating byte; the list that keeps them grows
# (a few reallocations) in either function too.
SLACK_BYTES, SLACK_BLOCKS = 8192, 8


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mem-python") / "alloc.py"
    path.write_text(APP)
    return path


def by_function(snap: MemSnapshot) -> dict[str, list[int]]:
    """Outstanding [bytes, blocks] under the chain <module> > main > big|small."""
    out = {"big": [0, 0], "small": [0, 0]}
    for alloc in snap.outstanding:
        python = [f for f in alloc.frames if f.startswith("alloc.")]
        names = [f.split(" (")[0] for f in python]
        if names[:2] != ["alloc.<module>", "alloc.main"] or len(names) != 3:
            continue
        function = names[2].removeprefix("alloc.")
        if function not in out:
            continue
        line = BIG_LINE if function == "big" else SMALL_LINE
        assert python[2] == f"alloc.{function} (alloc.py:{line})", python
        assert "_PyEval_EvalFrameDefault" not in alloc.frames
        out[function][0] += alloc.bytes
        out[function][1] += alloc.count
    return out


@pytest.mark.bpf
@pytest.mark.parametrize("version", VERSIONS)
def test_allocations_carry_their_python_functions(version: str, app: Path) -> None:
    python = interpreter(version)
    snap = collect(MemConfig(targets=TargetSpec(command=(str(python), str(app)))))
    found = by_function(snap)
    for function, size in (("big", BIG), ("small", SMALL)):
        size_bytes, blocks = found[function]
        assert BLOCKS <= blocks <= BLOCKS + SLACK_BLOCKS, found
        assert BLOCKS * size <= size_bytes <= BLOCKS * size + SLACK_BYTES, found
    share = found["big"][0] / (found["big"][0] + found["small"][0])
    assert abs(share - 2 / 3) < 0.001, found
    assert f"python: 1 CPython processes ({version}" in "".join(snap.notes)


@pytest.mark.bpf
def test_no_python_keeps_the_native_frames(app: Path) -> None:
    python = interpreter("3.12")
    config = MemConfig(targets=TargetSpec(command=(str(python), str(app))), python=False)
    snap = collect(config)
    assert not any(f.startswith("alloc.") for a in snap.outstanding for f in a.frames)
    assert sum(a.bytes for a in snap.outstanding) >= BLOCKS * (BIG + SMALL)


def test_split_stack() -> None:
    assert split_stack((10, 20)) == ((10, 20), ())
    assert split_stack((10, NATIVE_END, 7, 8)) == ((10,), (7, 8))
    assert split_stack((NATIVE_END, 7)) == ((), (7,))
