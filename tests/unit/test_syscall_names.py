import pytest

from otlp_ebpf.collectors.syscalls import resolve_names, syscall_name, syscall_table
from otlp_ebpf.errors import UsageError
from otlp_ebpf.latency import percentile_ns, slot_bounds


def test_tables_know_both_architectures():
    x86, arm = syscall_table("x86_64"), syscall_table("aarch64")
    assert x86[0] == "read" and x86[110] == "getppid" and x86[231] == "exit_group"
    assert arm[63] == "read" and arm[173] == "getppid" and arm[94] == "exit_group"
    assert x86[435] == arm[435] == "clone3"


def test_unknown_numbers_get_a_stable_name():
    assert syscall_name(999, syscall_table("x86_64")) == "syscall_999"
    assert resolve_names(["syscall_999", "read"], syscall_table("x86_64")) == [999, 0]


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UsageError, match=r"did you mean.*getppid"):
        resolve_names(["getpid_"], syscall_table("x86_64"))


def test_percentiles_interpolate_inside_slots_and_clamp():
    hist = [0] * 10
    hist[4] = 100  # 100 calls in [16, 32) ns
    assert 16 <= percentile_ns(hist, 0.5, 16, 31) <= 31
    assert percentile_ns(hist, 0.99, 18, 20) == 20
    assert percentile_ns([0, 0], 0.5, 0, 0) == 0
    assert slot_bounds(4) == [1, 3, 7, 15]
