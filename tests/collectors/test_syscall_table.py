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


# The shape of the kernel's include/uapi/asm-generic/unistd.h, cut down: numbers that exist
# only where an architecture asks for them (#ifdef __ARCH_WANT_...), numbers that name a
# different call per architecture (#ifdef ... #else), 32-bit-only numbers (#if ...
# __BITS_PER_LONG == 32), and names given through __NR3264_ aliases in a #if/#else.
GENERIC_UNISTD = """
#include <asm/bitsperlong.h>
#define __NR_io_setup 0
__SC_COMP(__NR_io_setup, sys_io_setup, compat_sys_io_setup)
#if defined(__ARCH_WANT_TIME32_SYSCALLS) || __BITS_PER_LONG != 32
#define __NR_io_getevents 4
__SC_3264(__NR_io_getevents, sys_io_getevents_time32, sys_io_getevents)
#endif
#define __NR3264_fcntl 25
__SC_COMP_3264(__NR3264_fcntl, sys_fcntl64, sys_fcntl, compat_sys_fcntl64)
#ifdef __ARCH_WANT_RENAMEAT
/* renameat is superseded with flags by renameat2 */
#define __NR_renameat 38
__SYSCALL(__NR_renameat, sys_renameat)
#endif /* __ARCH_WANT_RENAMEAT */
#if defined(__ARCH_WANT_NEW_STAT) || defined(__ARCH_WANT_STAT64)
#define __NR3264_fstatat 79
__SC_3264(__NR3264_fstatat, sys_fstatat64, sys_newfstatat)
#define __NR3264_fstat 80
__SC_3264(__NR3264_fstat, sys_fstat64, sys_newfstat)
#endif
#ifdef __ARCH_WANT_SYNC_FILE_RANGE2
#define __NR_sync_file_range2 84
__SC_COMP(__NR_sync_file_range2, sys_sync_file_range2, compat_sys_sync_file_range2)
#else
#define __NR_sync_file_range 84
__SC_COMP(__NR_sync_file_range, sys_sync_file_range, compat_sys_sync_file_range)
#endif
#ifdef __ARCH_WANT_SET_GET_RLIMIT
/* getrlimit and setrlimit are superseded with prlimit64 */
#define __NR_getrlimit 163
__SC_COMP(__NR_getrlimit, sys_getrlimit, compat_sys_getrlimit)
#define __NR_setrlimit 164
__SC_COMP(__NR_setrlimit, sys_setrlimit, compat_sys_setrlimit)
#endif
#define __NR_getppid 173
__SYSCALL(__NR_getppid, sys_getppid)
#if defined(__SYSCALL_COMPAT) || __BITS_PER_LONG == 32
#define __NR_clock_gettime64 403
__SYSCALL(__NR_clock_gettime64, sys_clock_gettime)
#endif
#define __NR_clone3 435
__SYSCALL(__NR_clone3, sys_clone3)
#undef __NR_syscalls
#define __NR_syscalls 436
#if __BITS_PER_LONG == 64 && !defined(__SYSCALL_COMPAT)
#define __NR_fcntl __NR3264_fcntl
#if defined(__ARCH_WANT_NEW_STAT) || defined(__ARCH_WANT_STAT64)
#define __NR_newfstatat __NR3264_fstatat
#define __NR_fstat __NR3264_fstat
#endif
#else
#define __NR_fcntl64 __NR3264_fcntl
#if defined(__ARCH_WANT_NEW_STAT) || defined(__ARCH_WANT_STAT64)
#define __NR_fstatat64 __NR3264_fstatat
#define __NR_fstat64 __NR3264_fstat
#endif
#endif
"""


@pytest.fixture
def generator():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "tools" / "gen_syscall_table.py"
    spec = importlib.util.spec_from_file_location("gen_syscall_table", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def known(table: dict[int, str], generator) -> dict[int, str]:
    return {n: s for n, s in table.items() if n not in generator.NEWER}


def test_the_generator_honours_the_generic_tables_conditions_for_arm64(generator, tmp_path):
    header = tmp_path / "unistd.h"
    header.write_text(GENERIC_UNISTD)
    arm64 = known(generator.parse(header, generator.ARM64_MACROS), generator)
    assert arm64 == {
        0: "io_setup",
        4: "io_getevents",
        25: "fcntl",
        38: "renameat",  # arm64 wants renameat and set/getrlimit
        79: "newfstatat",
        80: "fstat",
        84: "sync_file_range",  # not sync_file_range2 (that #ifdef is not arm64's)
        163: "getrlimit",
        164: "setrlimit",
        173: "getppid",
        435: "clone3",
    }  # and no 403: clock_gettime64 is for 32-bit ABIs only


def test_an_architecture_without_the_old_calls_has_no_numbers_for_them(generator, tmp_path):
    header = tmp_path / "unistd.h"
    header.write_text(GENERIC_UNISTD)
    riscv_like = {"__BITS_PER_LONG": 64, "__ARCH_WANT_NEW_STAT": 1}
    table = known(generator.parse(header, riscv_like), generator)
    assert 38 not in table and 163 not in table and 164 not in table
    arm32_like = {"__BITS_PER_LONG": 32, "__ARCH_WANT_STAT64": 1, "__ARCH_WANT_RENAMEAT": 1}
    table = known(generator.parse(header, arm32_like), generator)
    assert (table[25], table[79], table[403]) == ("fcntl64", "fstatat64", "clock_gettime64")
    assert 4 not in table  # time32 io_getevents: neither wanted nor a 64-bit ABI


def test_the_shipped_arm64_table_has_no_32_bit_only_or_foreign_numbers():
    arm = syscall_table("aarch64")
    assert arm[84] == "sync_file_range"
    assert (arm[38], arm[163], arm[164]) == ("renameat", "getrlimit", "setrlimit")
    assert not any(name.endswith("_time64") for name in arm.values())
