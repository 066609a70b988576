"""Symbolization of real processes running programs compiled here with gcc."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from otlp_ebpf.symbolize.resolver import UNKNOWN_FRAME, Symbolizer

PROGRAM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

__attribute__((noinline)) int sym_alpha(int x) { return x * 3 + 1; }
__attribute__((noinline)) static int sym_beta(int x) { return sym_alpha(x) ^ 5; }

int main(void) {
    volatile int sink = sym_beta(2);
    printf("pid %d\n", (int)getpid());
    printf("sym_alpha %p\n", (void *)&sym_alpha);
    printf("sym_beta %p\n", (void *)&sym_beta);
    printf("main %p\n", (void *)&main);
#ifndef STATIC
    printf("qsort %p\n", dlsym(RTLD_DEFAULT, "qsort"));
    printf("nanosleep %p\n", dlsym(RTLD_DEFAULT, "nanosleep"));
#endif
    printf("ready\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {
    }
    return sink & 0;
}
"""

OWN_FUNCTIONS = ("sym_alpha", "sym_beta", "main")


@dataclass
class Running:
    proc: subprocess.Popen[str]
    pid: int
    addrs: dict[str, int]

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


def _gcc(source: Path, out: Path, *flags: str) -> Path:
    subprocess.run(["gcc", "-O0", "-g", *flags, "-o", str(out), str(source)], check=True)
    return out


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("symbolize")
    (directory / "prog.c").write_text(PROGRAM)
    return directory


@pytest.fixture(scope="module")
def pie(build: Path) -> Path:
    return _gcc(build / "prog.c", build / "prog_pie", "-pie", "-fPIE")


@pytest.fixture(scope="module")
def no_pie(build: Path) -> Path:
    return _gcc(build / "prog.c", build / "prog_nopie", "-no-pie", "-fno-PIE")


def _start(argv: list[str]) -> Running:
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stdout is not None
    addrs: dict[str, int] = {}
    pid = 0
    for line in proc.stdout:
        key, _, value = line.strip().partition(" ")
        if key == "ready":
            break
        if key == "pid":
            pid = int(value)
        else:
            addrs[key] = int(value, 16)
    assert pid, "the test program did not start"
    return Running(proc, pid, addrs)


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def _run(started: list[Running], argv: list[str]) -> Running:
    run = _start(argv)
    started.append(run)
    return run


def _resolve_own(symbolizer: Symbolizer, run: Running) -> dict[str, str]:
    frames = symbolizer.user_frames(
        run.pid, [run.addrs[n] for n in OWN_FUNCTIONS], adjust_return_addresses=False
    )
    return {name: frame for name, (frame, _module) in zip(OWN_FUNCTIONS, frames, strict=True)}


@pytest.mark.parametrize("variant", ["pie", "no_pie"])
def test_functions_of_pie_and_fixed_address_programs_resolve_exactly(
    variant: str, request: pytest.FixtureRequest, running: list[Running]
) -> None:
    binary: Path = request.getfixturevalue(variant)
    run = _run(running, [str(binary)])
    with Symbolizer() as symbolizer:
        assert symbolizer.remember_process(run.pid)
        assert _resolve_own(symbolizer, run) == {n: n for n in OWN_FUNCTIONS}
        frames = symbolizer.user_frames(run.pid, [run.addrs["sym_alpha"] + 4])
        assert frames == [("sym_alpha", str(binary))]


def test_return_addresses_are_looked_up_one_byte_back(pie: Path, running: list[Running]) -> None:
    run = _run(running, [str(pie)])
    beta = run.addrs["sym_beta"]
    with Symbolizer() as symbolizer:
        leaf, caller = symbolizer.user_frames(run.pid, [beta, beta])
        unadjusted = symbolizer.user_frames(run.pid, [beta, beta], adjust_return_addresses=False)
    assert leaf[0] == "sym_beta"
    # The byte before sym_beta belongs to whatever precedes it, never to sym_beta itself.
    assert caller[0] != "sym_beta"
    assert unadjusted == [("sym_beta", str(pie))] * 2


def test_libc_functions_resolve_through_the_libc6_dbg_debug_file(
    pie: Path, running: list[Running]
) -> None:
    run = _run(running, [str(pie)])
    with Symbolizer() as symbolizer:
        frames = symbolizer.user_frames(
            run.pid, [run.addrs["qsort"], run.addrs["nanosleep"]], adjust_return_addresses=False
        )
    assert [name for name, _ in frames] == ["qsort", "nanosleep"]
    assert all(os.path.basename(module) == "libc.so.6" for _, module in frames)


def test_stripped_program_resolves_through_its_debuglink(
    build: Path, running: list[Running]
) -> None:
    binary = _gcc(build / "prog.c", build / "prog_linked", "-pie")
    debug = build / "prog_linked.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(binary), str(debug)], check=True)
    subprocess.run(["strip", "--strip-all", str(binary)], check=True)
    subprocess.run(["objcopy", f"--add-gnu-debuglink={debug}", str(binary)], check=True, cwd=build)
    run = _run(running, [str(binary)])
    with Symbolizer(debug_roots=[str(build / "no-such-root")]) as symbolizer:
        assert _resolve_own(symbolizer, run) == {n: n for n in OWN_FUNCTIONS}


def test_stripped_program_resolves_through_a_build_id_debug_file(
    build: Path, tmp_path: Path, running: list[Running]
) -> None:
    binary = _gcc(build / "prog.c", tmp_path / "prog_bid", "-pie", "-Wl,--build-id=sha1")
    notes = subprocess.run(
        ["readelf", "-n", str(binary)], check=True, capture_output=True, text=True
    ).stdout
    build_id = notes.split("Build ID:")[1].split()[0]
    debug_dir = tmp_path / "debug" / ".build-id" / build_id[:2]
    debug_dir.mkdir(parents=True)
    debug = debug_dir / f"{build_id[2:]}.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(binary), str(debug)], check=True)
    subprocess.run(["strip", "--strip-all", str(binary)], check=True)
    run = _run(running, [str(binary)])
    with Symbolizer(debug_roots=[str(tmp_path / "debug")]) as symbolizer:
        assert _resolve_own(symbolizer, run) == {n: n for n in OWN_FUNCTIONS}
    with Symbolizer(debug_roots=[str(tmp_path / "elsewhere")]) as without_debug:
        frames = without_debug.user_frames(run.pid, [run.addrs["sym_beta"]])
    # Stripped and without its debug file, the frame is still there, as module+offset.
    assert frames[0][0].startswith("prog_bid+0x")
    assert without_debug.stats.by_reason == {"no_symbol": 1}


def test_process_that_exited_after_capture_still_resolves(
    build: Path, pie: Path, running: list[Running]
) -> None:
    binary = build / "prog_exits"
    shutil.copy(pie, binary)
    run = _run(running, [str(binary)])
    with Symbolizer() as symbolizer:
        symbolizer.remember_process(run.pid)
        run.stop()
        binary.unlink()  # gone from disk as well: only the descriptor kept at capture remains
        assert not Path(f"/proc/{run.pid}").exists()
        assert _resolve_own(symbolizer, run) == {n: n for n in OWN_FUNCTIONS}
        libc = symbolizer.user_frames(run.pid, [run.addrs["qsort"]])
    assert libc[0][0] == "qsort"


def test_deleted_binary_of_a_live_process_resolves(
    build: Path, pie: Path, running: list[Running]
) -> None:
    binary = build / "prog_deleted"
    shutil.copy(pie, binary)
    run = _run(running, [str(binary)])
    binary.unlink()
    with Symbolizer() as symbolizer:
        frames = symbolizer.user_frames(run.pid, [run.addrs["sym_alpha"]])
    assert frames == [("sym_alpha", str(binary))]


def test_program_in_a_chroot_resolves_through_proc_root(
    build: Path, tmp_path: Path, running: list[Running]
) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    _gcc(build / "prog.c", root / "bin" / "prog", "-static", "-DSTATIC")
    run = _run(running, ["chroot", str(root), "/bin/prog"])
    with Symbolizer() as symbolizer:
        assert _resolve_own(symbolizer, run) == {n: n for n in OWN_FUNCTIONS}
        frames = symbolizer.user_frames(run.pid, [run.addrs["main"]])
    # /proc/PID/maps shows paths from the reader's root; the file was opened through the
    # process's own root or its map_files entry.
    assert frames[0][1] == str(root / "bin" / "prog")


def test_vdso_functions_resolve(pie: Path, running: list[Running], tmp_path: Path) -> None:
    run = _run(running, [str(pie)])
    start, end = _vdso_range(run.pid)
    image = tmp_path / "vdso.so"
    with open(f"/proc/{run.pid}/mem", "rb") as mem:
        mem.seek(start)
        image.write_bytes(mem.read(end - start))
    dynamic = subprocess.run(
        ["nm", "-D", "--defined-only", str(image)], check=True, capture_output=True, text=True
    ).stdout
    offsets = {
        line.split()[2].split("@")[0]: int(line.split()[0], 16) for line in dynamic.splitlines()
    }
    with Symbolizer() as symbolizer:
        frames = symbolizer.user_frames(
            run.pid, [start + offsets["__vdso_clock_gettime"] + 1], adjust_return_addresses=False
        )
    # clock_gettime and __vdso_clock_gettime share the address: the plainer name is shown.
    assert frames == [("clock_gettime", "[vdso]")]


def test_address_in_no_mapping_is_unknown_and_anonymous_memory_is_hex(
    pie: Path, running: list[Running]
) -> None:
    run = _run(running, [str(pie)])
    stack = next(
        int(line.split("-")[0], 16)
        for line in Path(f"/proc/{run.pid}/maps").read_text().splitlines()
        if line.endswith("[stack]")
    )
    with Symbolizer() as symbolizer:
        frames = symbolizer.user_frames(run.pid, [0x10, stack + 8], adjust_return_addresses=False)
        assert frames == [(UNKNOWN_FRAME, ""), (f"0x{stack + 8:x}", "[stack]")]
        assert symbolizer.stats.by_reason == {"no_mapping": 1, "anonymous": 1}


def test_perf_map_names_jit_code_of_a_live_process(pie: Path, running: list[Running]) -> None:
    run = _run(running, [str(pie)])
    perf_map = Path(f"/tmp/perf-{run.pid}.map")
    jit_start = 0x10_0000_0000
    perf_map.write_text(f"{jit_start:x} 40 LazyCompile:*render app.js:12\n")
    try:
        with Symbolizer() as symbolizer:
            frames = symbolizer.user_frames(
                run.pid, [jit_start + 0x10], adjust_return_addresses=False
            )
    finally:
        perf_map.unlink()
    assert frames[0][0] == "LazyCompile:*render app.js:12"


def test_second_process_of_the_same_binary_parses_nothing_again(
    pie: Path, running: list[Running]
) -> None:
    first = _run(running, [str(pie)])
    second = _run(running, [str(pie)])
    with Symbolizer() as symbolizer:
        symbolizer.user_frames(first.pid, [first.addrs["sym_alpha"], first.addrs["qsort"]])
        assert symbolizer.files_parsed == 3  # the program, libc and libc's debug file
        parsed = symbolizer.files_parsed
        frames = symbolizer.user_frames(
            second.pid,
            [second.addrs["sym_alpha"], second.addrs["qsort"]],
            adjust_return_addresses=False,
        )
    assert [name for name, _ in frames] == ["sym_alpha", "qsort"]
    assert symbolizer.files_parsed == parsed  # nothing parsed again (timings: bench/)


def test_kernel_symbol_from_kallsyms_resolves_with_suffix() -> None:
    wanted = {"vfs_read", "do_sys_openat2"}
    addresses = {}
    with open("/proc/kallsyms") as fh:
        for line in fh:
            addr, kind, name = line.split()[:3]
            if name in wanted and kind in "Tt":
                addresses[name] = int(addr, 16)
    assert set(addresses) == wanted
    with Symbolizer() as symbolizer:
        names = symbolizer.kernel_frames(
            [addresses["vfs_read"] + 1, addresses["do_sys_openat2"] + 1]
        )
    assert names == ["vfs_read_[k]", "do_sys_openat2_[k]"]


def _vdso_range(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if line.endswith("[vdso]"):
            start, end = line.split()[0].split("-")
            return int(start, 16), int(end, 16)
    raise AssertionError("no vdso mapping")
