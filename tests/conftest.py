"""Shared test set-up: real BPF for integration tests, failing loudly where it must exist."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otlp_ebpf import console


def bpf_unavailable_reason() -> str | None:
    """Why real BPF cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "not root (BPF needs root or CAP_BPF + CAP_PERFMON)"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "kernel has no BTF (/sys/kernel/btf/vmlinux)"
    from otlp_ebpf.runtime import features

    if features.tracefs() is None:
        return "tracefs is not mounted"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = bpf_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "bpf" not in item.keywords:
            continue
        if os.environ.get("CI"):
            # In CI real BPF must run: a missing capability is a failure, never a skip.
            item.add_marker(pytest.mark.usefixtures("_fail_without_bpf"))
        else:
            item.add_marker(pytest.mark.skip(reason=f"BPF unavailable: {reason}"))


@pytest.fixture
def _fail_without_bpf() -> None:
    pytest.fail(f"BPF unavailable in CI: {bpf_unavailable_reason()}")


@pytest.fixture(autouse=True)
def _fresh_console() -> Iterator[None]:
    """Each test starts with default console flags (a CLI run may have set --quiet)."""
    console.configure(quiet=False, debug=False)
    yield
    console.configure(quiet=False, debug=False)


@pytest.fixture(scope="session")
def cc() -> str:
    compiler = shutil.which("gcc") or shutil.which("cc")
    assert compiler, "a C compiler is needed to build test workloads"
    return compiler


def sample_held_targets(sampler: Any, targets: Any, on_poll: Any = None) -> None:
    """Start `sampler` (a cpu sampler) on held targets, release them and poll until they end
    (calling `on_poll()` after each poll); the caller drains and cleans up."""
    from otlp_ebpf.runtime.stats import StatsSession

    with StatsSession():
        sampler.start(targets)
        targets.release()
        while not targets.finished():
            sampler.poll(100)
            if on_poll is not None:
                on_poll()


def build_c(cc: str, source: str, out: Path, *flags: str) -> Path:
    """Compile a C workload for a test; returns the binary path."""
    src = out.with_suffix(".c")
    src.write_text(source)
    subprocess.run([cc, *flags, "-o", str(out), str(src)], check=True)
    return out


@pytest.fixture
def full_disk() -> Iterator[Path]:
    """A 64 KiB tmpfs filled to the last block: every write ends in ENOSPC."""
    path = Path(tempfile.mkdtemp(prefix="otlp-ebpf-full-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], check=True)
    try:
        fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
        path.rmdir()


# Workloads spin for a TIME of their own CPU, never for an iteration count: how much work a
# loop does per second depends on the CPU (two equal loops were measured to split 3.9:1), the
# split of CPU time does not, and a thread's CPU clock does not run while a busy machine
# preempts it. Paste SPIN_CPU_C into a workload and call SPIN_CPU_MS(ms) in the function that
# should own the time; the clock is read every SPIN_CHECK_EVERY (20,000) additions, so reading
# it (a syscall) stays a few percent of the spin on an idle machine. On a loaded one the
# syscall costs more, and varies: 18-30 % of the spin from one run to the next, measured at
# load 20. A test comparing runs with each other builds with -DSPIN_CHECK_EVERY=200000.
# Each spin lasts a pseudo-random 50-150 % of `ms` (the mean is `ms`): a workload with a fixed
# rhythm locks onto the sampling clock's (rounds of a() 1 ms + b() 1 ms sampled at 499 Hz, a
# 2.004 ms period, put 56 % of the samples in a() and 35 % in b()).
SPIN_CPU_C = r"""
#include <time.h>
#ifndef SPIN_CHECK_EVERY
#define SPIN_CHECK_EVERY 20000
#endif
static volatile unsigned long spin_sink;
static unsigned long spin_seed = 88172645463325252UL;
__attribute__((noinline)) double thread_cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
static double spin_jitter(void) { /* xorshift64: uniform in [0.5, 1.5) */
    spin_seed ^= spin_seed << 13;
    spin_seed ^= spin_seed >> 7;
    spin_seed ^= spin_seed << 17;
    return 0.5 + (spin_seed >> 11) * (1.0 / 9007199254740992.0);
}
#define SPIN_CPU_MS(ms) do { \
    double spin_end = thread_cpu_s() + (ms) * spin_jitter() / 1e3; \
    while (thread_cpu_s() < spin_end) \
        for (int spin_i = 0; spin_i < SPIN_CHECK_EVERY; spin_i++) spin_sink += spin_i; \
} while (0)
"""


def assert_ratio(first: float, second: float, expected: float) -> None:
    """`first / second` is `expected`, within the sampling error of the two counts.

    Sampled counts scatter like binomial draws: with n samples a count is off by about
    sqrt(n). A fixed 15 % band is about one standard error for a few hundred samples, so it
    would fail on chance alone; three standard errors of the ratio (never less than 15 %)
    still tell a 2:1 split from 1.5:1 or 3:1. Counts that are not samples (nanoseconds of
    blocked time) have a negligible error: the 15 % floor applies."""
    assert second > 0, "the lighter function was never seen"
    ratio = first / second
    error = ratio * (1 / max(first, 1) + 1 / second) ** 0.5
    allowed = max(0.15 * expected, 3 * error)
    assert abs(ratio - expected) <= allowed, (
        f"ratio {ratio:.2f} ({first:g} vs {second:g}), expected {expected:g} +- {allowed:.2f}"
    )


NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def _python_for_nobody() -> str | None:
    """An interpreter of this Python's version that user nobody may run: this one unless it
    lives under a directory nobody cannot enter (pyenv under /root), else the system's."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin")):
        if not candidate:
            continue
        probe = subprocess.run(
            [*NOBODY, candidate, "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
        if probe.returncode == 0 and probe.stdout.strip() == str(tuple(sys.version_info[:2])):
            return candidate
    return None


def run_as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m otlp_ebpf ARGS` as user nobody (no privileges), importing this tree and
    this environment's packages."""
    import otlp_ebpf

    python = _python_for_nobody()
    if shutil.which("setpriv") is None or python is None:
        pytest.skip("no setpriv (util-linux), or no Python of this version user nobody may run")
    paths = [str(Path(otlp_ebpf.__file__).parent.parent)]
    paths += [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV_", "COVERAGE"))}
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["COLUMNS"] = "200"
    return subprocess.run(
        [*NOBODY, python, "-m", "otlp_ebpf", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
        check=False,
    )
