"""Python frames in cpu profiles of unmodified CPython processes, on every installed version.

The workload spends thread CPU time (not wall time) in two pure-Python functions, `a` twice
as long per call as `b`, so whatever the machine's load, a's share of the samples in either
function is 2/3. Each installed interpreter runs it under `cpu -- python app.py`; one also
under `--pid`, one with two threads, one with `--no-python`, and an unsupported version.
Workloads are short (0.6 s of CPU) and sampled at 499 Hz: ~300 samples each, and the work
starts at once, so every run also checks that no sample is taken before the interpreter is
known (its evaluation loop left unnamed).
"""

from __future__ import annotations

import ctypes
import glob
import os
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from otlp_ebpf.collectors import cpu
from otlp_ebpf.collectors.python_frames import GONE_BEFORE_NAMED, UNDECIDED_MAP
from otlp_ebpf.model import CpuSnapshot, StackCount
from otlp_ebpf.symbolize.python import UNKNOWN_CODE
from otlp_ebpf.targets import TargetSpec

pytestmark = pytest.mark.bpf

PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
SYSTEM_PYTHON = Path("/usr/bin/python3.11")
VERSIONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
UNSUPPORTED = "3.7"
HZ = 499
CPU_S = "0.6"  # the workloads' CPU seconds at HZ: ~300 samples
# Samples allowed to keep the evaluation loop unnamed: the one a new image is held at, taken
# while its interpreter starts (bpf/python.h).
UNNAMED_AT_START = 2

# Work.a() spins for 2 ms of this thread's CPU time per call, main's inner b() for 1 ms, until
# argv[1] seconds of CPU time are spent (a method and a nested function: their qualified names
# come from co_qualname from 3.11 on, from the source before).
APP = """\
import sys
import time


def spin(ms):
    end = time.thread_time() + ms / 1000.0
    while time.thread_time() < end:
        pass


class Work:
    def a(self):
        spin(2)


def main(cpu_s):
    def b():
        spin(1)

    work = Work()
    stop = time.thread_time() + cpu_s
    while time.thread_time() < stop:
        work.a()
        b()


main(float(sys.argv[1]))
"""
SPIN_LINES = (6, 7, 8)  # the loop of spin() (3.10 reports the `pass` NOP)
A_CALL_LINE = 13
B_CALL_LINE = 18
SPIN_DEF_LINE = 5
A, B = "app.Work.a", "app.main.<locals>.b"

# Two threads, each in its own function, for argv[1] seconds of CPU time each; the main
# thread waits in join().
THREADS_APP = """\
import sys
import threading
import time


def spin_until(stop):
    while time.thread_time() < stop:
        pass


def worker_a(cpu_s):
    spin_until(time.thread_time() + cpu_s)


def worker_b(cpu_s):
    spin_until(time.thread_time() + cpu_s)


threads = [
    threading.Thread(target=worker_a, args=(float(sys.argv[1]),), name="wa"),
    threading.Thread(target=worker_b, args=(float(sys.argv[1]),), name="wb"),
]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


# Blocks in two functions, 20 ms and 10 ms per call.
SLEEPER_APP = """\
import time


def nap_long():
    time.sleep(0.02)


def nap_short():
    time.sleep(0.01)


def main(rounds):
    for _ in range(rounds):
        nap_long()
        nap_short()


main(60)
"""


# A C extension's hot path (zlib) called from a generator, then code compiled after the start.
MIXED_APP = """\
import sys
import time
import zlib

DATA = bytes(range(256)) * 512


def c():
    end = time.thread_time() + 0.001
    while time.thread_time() < end:
        zlib.compress(DATA, 9)


def gen():
    while True:
        yield c()


def main(cpu_s):
    stop = time.thread_time() + cpu_s
    g = gen()
    while time.thread_time() < stop:
        next(g)
    ns = {}
    exec(compile("def made_later():\\n    return sum(range(100000))\\n", "later.py", "exec"), ns)
    stop = time.thread_time() + cpu_s
    while time.thread_time() < stop:
        ns["made_later"]()


main(float(sys.argv[1]))
"""


# Two asyncio tasks taking turns: worker_a spins 2 ms of CPU per turn, worker_b 1 ms.
ASYNC_APP = """\
import asyncio
import sys
import time


def spin(ms):
    end = time.thread_time() + ms / 1000.0
    while time.thread_time() < end:
        pass


async def worker_a(stop):
    while time.thread_time() < stop:
        spin(2)
        await asyncio.sleep(0)


async def worker_b(stop):
    while time.thread_time() < stop:
        spin(1)
        await asyncio.sleep(0)


async def main(cpu_s):
    stop = time.thread_time() + cpu_s
    await asyncio.gather(worker_a(stop), worker_b(stop))


asyncio.run(main(float(sys.argv[1])))
"""


# The same Python stacks in a parent and then in a forked child that exits first.
FORK_APP = """\
import os
import time


def spin(ms):
    end = time.thread_time() + ms / 1000.0
    while time.thread_time() < end:
        pass


def a():
    spin(2)


def main(cpu_s):
    stop = time.thread_time() + cpu_s
    while time.thread_time() < stop:
        a()


for child in (False, True):
    if child and os.fork():
        os.wait()
        break
    main(0.4)
"""


def interpreter(version: str) -> Path:
    """The pyenv build of `version` (3.X), skipping the test when it is not installed."""
    found = sorted(glob.glob(str(PYENV / f"{version}.*" / "bin" / f"python{version}")))
    if not found:
        pytest.skip(f"CPython {version} is not installed under {PYENV}")
    return Path(found[-1])


def _decode_unwind_table(path: str) -> None:
    from otlp_ebpf.symbolize.cfi import CfiCache, default_cache_dir

    CfiCache(default_cache_dir()).table_for_path(path)


@pytest.fixture(scope="module", autouse=True)
def unwind_tables() -> None:
    """The interpreters' unwind tables in the disk cache before the runs (decoded there, two
    at a time, unless they are already): a run here lasts less than decoding libpython's
    (~1.3 s of CPU) may take on a loaded machine."""
    files = [SYSTEM_PYTHON, Path("/lib/x86_64-linux-gnu/libc.so.6")]
    for version in VERSIONS:
        files += PYENV.glob(f"{version}.*/lib/libpython{version}.so.1.0")
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_decode_unwind_table, [str(p) for p in files if p.exists()]))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("python-frames") / "app.py"
    path.write_text(APP)
    return path


def profile(
    targets: TargetSpec,
    *,
    python: bool = True,
    duration_s: float | None = None,
    unwind: str = "auto",
    off_cpu: bool = False,
    frequency_hz: int = HZ,
) -> CpuSnapshot:
    config = cpu.CpuConfig(
        targets=targets,
        duration_s=duration_s,
        python=python,
        unwind=unwind,
        off_cpu=off_cpu,
        frequency_hz=frequency_hz,
    )
    return cpu.collect(config)


def unnamed_evaluation(snap: CpuSnapshot) -> int:
    """Samples whose interpreter's evaluation loop was not replaced by Python frames."""
    return sum(s.count for s in snap.stacks if "_PyEval_EvalFrameDefault" in s.frames)


def app_frames(stack: StackCount) -> list[str]:
    """The workload's Python frames of a stack, root first, without their location."""
    return [f.split(" (")[0] for f in stack.frames if f.startswith("app.")]


def frame_line(frame: str) -> int:
    return int(frame.rsplit(":", 1)[1].rstrip(")"))


def call_lines(call_line: int, just_entered: bool) -> tuple[int, ...]:
    """Where a caller may be: at its call, or at its `def` (one line up) if it is the leaf."""
    return (call_line, call_line - 1) if just_entered else (call_line,)


def check_two_to_one(snap: CpuSnapshot, *, native_unwind: bool = True) -> None:
    """The chain <module> -> main -> Work.a|main.<locals>.b -> spin (qualified names on every
    version), a's share 2/3, native frames around it, and Python frames from the first
    samples on."""
    assert unnamed_evaluation(snap) <= UNNAMED_AT_START, [
        s.frames for s in snap.stacks if "_PyEval_EvalFrameDefault" in s.frames
    ]
    chains: dict[str, int] = {}
    native_below = 0
    for stack in snap.stacks:
        names = app_frames(stack)
        if not names:
            continue
        chains[" > ".join(names)] = chains.get(" > ".join(names), 0) + stack.count
        first = next(i for i, f in enumerate(stack.frames) if f.startswith("app."))
        # Native frames stay below the Python ones (the interpreter's start-up path), unless
        # the native unwind stopped early...
        if first > 0 and stack.modules[first - 1] not in ("", stack.modules[first]):
            native_below += stack.count
        # ...and every evaluation-loop frame of the stack was replaced by Python frames.
        assert "_PyEval_EvalFrameDefault" not in stack.frames, stack.frames
        python_frames = [f for f in stack.frames if f.startswith("app.")]
        for depth, frame in enumerate(python_frames):
            # A function sampled on entry, before it called anything, is at its `def` line.
            just_entered = depth == len(python_frames) - 1
            if frame.startswith("app.spin "):
                assert frame_line(frame) in (*SPIN_LINES, SPIN_DEF_LINE), frame
            if frame.startswith(A + " "):
                assert frame_line(frame) in call_lines(A_CALL_LINE, just_entered), frame
            if frame.startswith(B + " "):
                assert frame_line(frame) in call_lines(B_CALL_LINE, just_entered), frame
    if native_unwind:
        assert native_below >= 0.9 * sum(chains.values()), (native_below, chains)
    in_a = chains.get(f"app.<module> > app.main > {A} > app.spin", 0)
    in_b = chains.get(f"app.<module> > app.main > {B} > app.spin", 0)
    assert in_a + in_b >= 0.8 * sum(chains.values()), chains
    assert in_a + in_b >= 150, chains
    share = in_a / (in_a + in_b)
    assert 0.57 <= share <= 0.76, (share, chains)


@pytest.mark.parametrize("version", VERSIONS)
def test_python_functions_and_their_shares(version: str, app: Path) -> None:
    python = interpreter(version)
    snap = profile(TargetSpec(command=(str(python), str(app), CPU_S)))
    check_two_to_one(snap)
    # 3.13 publishes its own layout, which the run uses.
    source = " via _Py_DebugOffsets" if version == "3.13" else ""
    assert f"python: 1 CPython processes ({version}{source})" in "".join(snap.notes)


def test_system_python_static_build(app: Path) -> None:
    """The distribution's interpreter links libpython statically (the runtime is in the
    executable)."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} is not installed")
    check_two_to_one(profile(TargetSpec(command=(str(SYSTEM_PYTHON), str(app), CPU_S))))


def test_attached_by_pid(app: Path, tmp_path: Path) -> None:
    """A running interpreter, attached to: it starts its measured work once a file appears
    (created a moment after the attach begins) and the run ends when it exits."""
    python = interpreter("3.12")
    go = tmp_path / "go"
    waiting = tmp_path / "waiting.py"
    waiting.write_text(
        "import os, runpy, sys, time\n"
        f"while not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.01)\n"
        f"sys.argv = [{str(app)!r}, {CPU_S!r}]\n"
        f"runpy.run_path({str(app)!r}, run_name='app')\n"
    )
    proc = subprocess.Popen([str(python), str(waiting)])
    starter = threading.Timer(1.0, go.touch)
    starter.start()
    try:
        snap = profile(TargetSpec(pids=(proc.pid,)))
    finally:
        starter.cancel()
        proc.kill()
        proc.wait()
    assert "ended: target exited" in snap.notes
    check_two_to_one(snap)


def test_threads_show_their_own_functions(tmp_path: Path) -> None:
    python = interpreter("3.11")
    script = tmp_path / "app.py"
    script.write_text(THREADS_APP)
    snap = profile(TargetSpec(command=(str(python), str(script), "0.4")))
    by_worker: dict[str, set[int]] = {"app.worker_a": set(), "app.worker_b": set()}
    for stack in snap.stacks:
        names = app_frames(stack)
        if names[-2:] in (["app.worker_a", "app.spin_until"], ["app.worker_b", "app.spin_until"]):
            by_worker[names[-2]].add(stack.tid)
            # The thread's own Python callers from the threading module, below the worker.
            assert any(f.startswith("threading.Thread.run ") for f in stack.frames), stack.frames
    assert len(by_worker["app.worker_a"]) == 1 and len(by_worker["app.worker_b"]) == 1, by_worker
    assert by_worker["app.worker_a"] != by_worker["app.worker_b"]


def test_no_python_keeps_the_interpreter_frames(app: Path) -> None:
    python = interpreter("3.11")
    snap = profile(TargetSpec(command=(str(python), str(app), "0.3")), python=False)
    assert not any(app_frames(s) for s in snap.stacks)
    assert any("_PyEval_EvalFrameDefault" in s.frames for s in snap.stacks)


def test_unsupported_version_is_said_and_keeps_native_frames(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    python = interpreter(UNSUPPORTED)
    snap = profile(TargetSpec(command=(str(python), str(app), "0.3")))
    assert not any(app_frames(s) for s in snap.stacks)
    assert any("_PyEval_EvalFrameDefault" in s.frames for s in snap.stacks)
    assert capsys.readouterr().err.count(f"CPython {UNSUPPORTED} ") == 1
    assert any(f"not supported: {UNSUPPORTED}" in n for n in snap.notes)


def test_py_structs_mirror_the_object_btf() -> None:
    from otlp_ebpf.collectors.python_frames import PyProc, PyStack
    from otlp_ebpf.runtime.btf import struct_layout
    from otlp_ebpf.runtime.loader import BpfObject

    for object_name, structs in (
        ("cpu_dwarf", (("py_proc", PyProc), ("py_stack", PyStack))),
        ("cpu", (("py_proc", PyProc),)),
    ):
        with BpfObject.open(object_name) as obj:
            for struct, mirror in structs:
                size, members = struct_layout(obj, struct)
                assert size == ctypes.sizeof(mirror), struct
                for name, *_ in mirror._fields_:
                    assert members[name] == getattr(mirror, name).offset, (struct, name)


def test_frame_pointer_sampling_carries_python_frames(app: Path) -> None:
    """--unwind fp: libpython has no frame pointers, so the native part is short, but the
    Python frames (read by the same walk, stored with the stack) are all there."""
    python = interpreter("3.12")
    snap = profile(TargetSpec(command=(str(python), str(app), CPU_S)), unwind="fp")
    check_two_to_one(snap, native_unwind=False)


def test_off_cpu_blocks_carry_python_frames(tmp_path: Path) -> None:
    python = interpreter("3.12")
    script = tmp_path / "app.py"
    script.write_text(SLEEPER_APP)
    snap = profile(TargetSpec(command=(str(python), str(script))), off_cpu=True)
    blocked: dict[str, list[int]] = {"app.nap_long": [0, 0], "app.nap_short": [0, 0]}
    for stack in snap.off_cpu:
        names = app_frames(stack)
        if names[:2] == ["app.<module>", "app.main"] and len(names) == 3 and names[2] in blocked:
            # A busy machine also preempts the thread between naps (an interrupt's kernel
            # stack, no sleep): those blocks are real, but not the naps compared here.
            if not any("nanosleep" in f for f in stack.frames):
                assert any("interrupt" in f or "schedule" in f for f in stack.frames), stack
                continue
            blocked[names[2]][0] += stack.count
            blocked[names[2]][1] += stack.total_ns
    # Every call blocks once; the first few, before the process is registered, have native
    # frames only.
    assert blocked["app.nap_long"][0] >= 30 and blocked["app.nap_short"][0] >= 30, blocked
    ratio = blocked["app.nap_long"][1] / blocked["app.nap_short"][1]
    assert 1.5 <= ratio <= 2.5, blocked


@pytest.mark.parametrize("version", ["3.10", "3.12"])
def test_c_extension_generator_and_code_made_later(version: str, tmp_path: Path) -> None:
    """The C extension's native frames above the Python function that called it, the
    generator's frame above the native frames that resumed it, exec'd code named."""
    python = interpreter(version)
    script = tmp_path / "app.py"
    script.write_text(MIXED_APP)
    snap = profile(TargetSpec(command=(str(python), str(script), "0.5")))
    in_c = in_libz = resumed = made_later = 0
    for stack in snap.stacks:
        names = [f.split(" (")[0] for f in stack.frames]
        if "later.made_later" in names:
            made_later += stack.count
            # line 2, its body; or line 1, the `def` (3.11+ enters a function at a RESUME
            # instruction that carries it, where a sample may rarely fall)
            frame = stack.frames[names.index("later.made_later")]
            assert frame in ("later.made_later (later.py:2)", "later.made_later (later.py:1)")
        if "app.c" not in names:
            continue
        in_c += stack.count
        at_c, at_gen = names.index("app.c"), names.index("app.gen")
        assert names.index("app.main") < at_gen < at_c, names
        # The generator runs in its own evaluation call, resumed from C by next() (where the
        # native unwind got that far).
        if "gen_iternext" in names[names.index("app.main") : at_gen]:
            resumed += stack.count
        if any("libz" in m for m in stack.modules[at_c + 1 :]):
            in_libz += stack.count
    assert in_c >= 50 and in_libz >= 0.7 * in_c, (in_c, in_libz)
    assert resumed >= 0.7 * in_c, (in_c, resumed)
    # The exec'd code runs in the last half: a tool lagging far behind on a loaded machine
    # reads some of its samples only after the exit, and counts them lost (never silently).
    gone = snap.lost_events.get(GONE_BEFORE_NAMED, 0)
    assert made_later + gone >= 50 and made_later >= 0.5 * in_c - gone, (
        made_later,
        in_c,
        snap.lost_events,
    )


def test_published_layout_matches_the_headers(app: Path) -> None:
    """3.13's _Py_DebugOffsets, read from a running interpreter, gives the offsets the table
    derived from its headers holds."""
    from otlp_ebpf.symbolize.procmaps import OpenFiles, ProcessMaps
    from otlp_ebpf.symbolize.python import CodeReader, find_interpreter, with_published_layout
    from otlp_ebpf.symbolize.python_layouts import LAYOUTS

    python = interpreter("3.13")
    proc = subprocess.Popen(
        [str(python), "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    files, reader = OpenFiles(), CodeReader()
    try:
        found = None
        for _ in range(200):  # until the loader has mapped libpython
            found = find_interpreter(ProcessMaps.capture(proc.pid, files), files)
            if found is not None:
                break
        assert found is not None
        published = with_published_layout(found, reader.runtime_bytes(proc.pid, found))
    finally:
        proc.kill()
        proc.wait()
        reader.close()
        files.close()
    assert published.layout_source == "_Py_DebugOffsets"
    assert published.layout == LAYOUTS[(3, 13)]


def test_record_carries_python_frames(app: Path) -> None:
    from otlp_ebpf.collectors import record

    python = interpreter("3.12")
    config = record.RecordConfig(
        targets=TargetSpec(command=(str(python), str(app), CPU_S)),
        signals=("cpu",),
        signals_given=True,
        frequency_hz=HZ,
    )
    snap = record.collect(config)
    cpu_snap = snap.signals["cpu"]
    assert isinstance(cpu_snap, CpuSnapshot)
    check_two_to_one(cpu_snap)


def test_asyncio_tasks_show_their_coroutines(tmp_path: Path) -> None:
    python = interpreter("3.12")
    script = tmp_path / "app.py"
    script.write_text(ASYNC_APP)
    snap = profile(TargetSpec(command=(str(python), str(script), CPU_S)))
    per_task = {"app.worker_a": 0, "app.worker_b": 0}
    for stack in snap.stacks:
        names = app_frames(stack)
        if names[-2:] in (["app.worker_a", "app.spin"], ["app.worker_b", "app.spin"]):
            per_task[names[-2]] += stack.count
            # The coroutine runs under the event loop's Python frames.
            assert any(f.startswith("asyncio.events.Handle._run ") for f in stack.frames), names
    total = sum(per_task.values())
    assert total >= 150, per_task
    assert 0.57 <= per_task["app.worker_a"] / total <= 0.76, per_task


def test_forked_child_gone_before_the_end_keeps_its_names(tmp_path: Path) -> None:
    """Frame-pointer stacks are read at the end: a child that stored no stack of its own
    (its parent stored the same ones first) and has exited is named from its parent's."""
    python = interpreter("3.12")
    script = tmp_path / "app.py"
    script.write_text(FORK_APP)
    snap = profile(TargetSpec(command=(str(python), str(script))), unwind="fp")
    named: dict[int, int] = {}
    for stack in snap.stacks:
        if app_frames(stack)[-3:] == ["app.main", "app.a", "app.spin"]:
            named[stack.pid] = named.get(stack.pid, 0) + stack.count
    # (Code run at start-up and freed before it is named may stay unknown: only the
    # workload's own stacks are looked at.)
    unknown = sum(
        s.count
        for s in snap.stacks
        if "[unknown python code]" in s.frames and "app.main" in app_frames(s)
    )
    # Parent and child, each with its own samples under the chain, nothing left unnamed.
    assert len(named) == 2 and min(named.values()) >= 30, named
    assert unknown == 0, unknown


def _walk_slowed(monkeypatch: pytest.MonkeyPatch, delay_for_pid: Callable[[int], None]) -> None:
    """The DWARF sampler's unwinding of each sample of a registered interpreter preceded by
    `delay_for_pid(pid)`: the tool's consumer behind its target, as on a loaded machine,
    made deterministic (once its image is decided: a target held at its start waits for the
    consumer)."""
    from otlp_ebpf.collectors import cpu_dwarf

    walk = cpu_dwarf.DwarfSampler._walk

    def slowed(self: cpu_dwarf.DwarfSampler, pid: int, *args: Any) -> Any:
        assert self.obj is not None
        undecided = self.obj.map(UNDECIDED_MAP).lookup(pid.to_bytes(4, "little"))
        if self.python is not None and pid in self.python.interpreters and undecided is None:
            delay_for_pid(pid)
        return walk(self, pid, *args)

    monkeypatch.setattr(cpu_dwarf.DwarfSampler, "_walk", slowed)


def _code_made_later(tmp_path: Path, hz: int) -> tuple[CpuSnapshot, int, int]:
    """MIXED_APP's run on 3.12: its samples in app.c (the first half) and in
    later.made_later (code created in the second half), 0.5 s of CPU each."""
    script = tmp_path / "app.py"
    script.write_text(MIXED_APP)
    command = (str(interpreter("3.12")), str(script), "0.5")
    snap = profile(TargetSpec(command=command), frequency_hz=hz)
    in_c = made_later = 0
    for stack in snap.stacks:
        names = [f.split(" (")[0] for f in stack.frames]
        in_c += stack.count if "app.c" in names else 0
        made_later += stack.count if "later.made_later" in names else 0
    return snap, in_c, made_later


def test_code_made_late_is_named_while_the_consumer_lags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each unwind takes 10 ms (the consumer handles half the samples it is sent): the
    samples that arrive meanwhile are named at once, while the target lives, so the code it
    creates in its last half second is named like its first (it was all unknown once the
    consumer reached those samples after the exit)."""
    _walk_slowed(monkeypatch, lambda pid: time.sleep(0.01))
    snap, in_c, made_later = _code_made_later(tmp_path, 199)
    assert in_c >= 50 and made_later >= 0.7 * in_c, (in_c, made_later, snap.lost_events)
    assert GONE_BEFORE_NAMED not in snap.lost_events, snap.lost_events


def _wait_for_exit(pid: int) -> None:
    """Return once `pid` is a zombie or gone (at most 30 s: the targets run 1 s of CPU)."""
    for _ in range(3000):
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            return
        if state in (b"Z", b"X"):
            return
        time.sleep(0.01)


def test_code_read_after_the_exit_is_counted_lost(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The consumer stalled from its first unwind until the target has exited: no code
    object can be read any more, and every sample whose code is left unknown is counted."""

    _walk_slowed(monkeypatch, _wait_for_exit)
    snap, _, _ = _code_made_later(tmp_path, HZ)
    unknown = sum(s.count for s in snap.stacks if any(f.startswith(UNKNOWN_CODE) for f in s.frames))
    assert unknown >= 200, unknown
    assert snap.lost_events.get(GONE_BEFORE_NAMED, 0) >= 0.95 * unknown, snap.lost_events


def test_frame_pointer_stacks_named_after_the_exit_are_counted_lost(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With frame pointers a stack is named when the kernel first stores it. The tool held
    back from naming until its target has exited can read no code object: every sample whose
    code is left unknown is counted in lost_events, none silently."""
    FramePointerSampler = cpu.FramePointerSampler
    name_stack = FramePointerSampler._name_python_stack

    def after_the_exit(self: Any, event: Any) -> None:
        _wait_for_exit(int(event.pid))
        name_stack(self, event)

    monkeypatch.setattr(FramePointerSampler, "_name_python_stack", after_the_exit)
    script = tmp_path / "app.py"
    script.write_text(MIXED_APP)
    command = (str(interpreter("3.12")), str(script), "0.5")
    snap = profile(TargetSpec(command=command), unwind="fp")
    unknown = sum(s.count for s in snap.stacks if any(f.startswith(UNKNOWN_CODE) for f in s.frames))
    assert unknown >= 50, unknown
    assert snap.lost_events.get(GONE_BEFORE_NAMED, 0) == unknown, snap.lost_events
