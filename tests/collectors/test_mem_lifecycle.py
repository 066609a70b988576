"""`mem -- CMD` pauses targets at exit() to read their maps: none may stay paused."""

from __future__ import annotations

import subprocess

import pytest

from otlp_ebpf.cli.app import run

pytestmark = pytest.mark.bpf


def stopped_processes() -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,stat="], capture_output=True, text=True, check=True)
    return {
        int(pid) for pid, stat in (ln.split() for ln in out.stdout.splitlines()) if stat[0] == "T"
    }


def test_a_run_that_ends_among_short_lived_children_leaves_none_stopped(tmp_path):
    script = tmp_path / "spawner.sh"
    # Thousands of short children: many of them are pausing at exit() when the run ends.
    script.write_text("#!/bin/sh\ni=0\nwhile [ $i -lt 100000 ]; do /bin/true; i=$((i+1)); done\n")
    script.chmod(0o755)
    before = stopped_processes()
    out = tmp_path / "m.json"
    assert run(["-q", "mem", "-d", "1", "-o", str(out), "--", str(script)]) == 0
    assert out.exists()
    assert stopped_processes() - before == set()
