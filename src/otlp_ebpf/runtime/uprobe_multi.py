"""Many uprobes as one link (BPF_TRACE_UPROBE_MULTI, Linux 6.6+), with per-probe cookies; or
as one session (BPF_TRACE_UPROBE_SESSION, 6.13+): one program at the entry and the return of
each function, whose entry returning 1 skips the return.

Detaching a classic uprobe costs ~0.1 s of kernel waiting, one after another; a collector
probing twenty allocator functions paid ~2 s at exit. A multi-uprobe link is detached in one
go. libbpf 1.1 predates it, so the link is created with the raw bpf(2) syscall. Programs
must be loaded for it (`prepare()` before load); where the kernel lacks it, `attach_classic`
attaches the same programs one probe at a time, each with its cookie.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Sequence
from ctypes import c_char_p, c_int, c_uint32, c_uint64, c_void_p

from otlp_ebpf.runtime import libbpf
from otlp_ebpf.runtime.libbpf import UprobeOpts
from otlp_ebpf.runtime.loader import BpfObject, Link
from otlp_ebpf.runtime.probes import _attach

BPF_LINK_CREATE = 28
BPF_TRACE_UPROBE_MULTI = 48
BPF_TRACE_UPROBE_SESSION = 57
BPF_F_UPROBE_MULTI_RETURN = 1
BPF_SYSCALL_NR = {"x86_64": 321, "aarch64": 280}
MIN_KERNEL = (6, 6)
MIN_SESSION_KERNEL = (6, 13)


class LinkCreateUprobeMulti(ctypes.Structure):
    """The BPF_LINK_CREATE member of union bpf_attr, uprobe_multi variant."""

    _fields_ = [
        ("prog_fd", c_uint32),
        ("target_fd", c_uint32),
        ("attach_type", c_uint32),
        ("flags", c_uint32),
        ("path", c_uint64),
        ("offsets", c_uint64),
        ("ref_ctr_offsets", c_uint64),
        ("cookies", c_uint64),
        ("cnt", c_uint32),
        ("multi_flags", c_uint32),
        ("pid", c_uint32),
        ("pad", c_uint32),
    ]


class FdLink(Link):
    """A link known only by its file descriptor: closing it detaches."""

    def __init__(self, fd: int, description: str) -> None:
        super().__init__(fd, description)

    def destroy(self) -> None:
        if self._ptr is not None:
            os.close(self._ptr)
            self._ptr = None


def kernel_supports(release: str | None = None, minimum: tuple[int, int] = MIN_KERNEL) -> bool:
    """Whether this kernel has multi-uprobe links (6.6+; sessions: `minimum` 6.13) and
    libbpf can prepare programs."""
    text = release if release is not None else platform.release()
    try:
        major, minor = (int(p) for p in text.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return (
        (major, minor) >= minimum
        and platform.machine() in BPF_SYSCALL_NR
        and libbpf.has("bpf_program__set_expected_attach_type")
    )


def sessions_supported(release: str | None = None) -> bool:
    """Whether this kernel has uprobe sessions (6.13+)."""
    return kernel_supports(release, MIN_SESSION_KERNEL)


def prepare(obj: BpfObject, programs: Sequence[str], *, session: bool = False) -> None:
    """Before load: make `programs` attachable as multi-uprobe links (sessions)."""
    fn = libbpf.lib().bpf_program__set_expected_attach_type
    kind = BPF_TRACE_UPROBE_SESSION if session else BPF_TRACE_UPROBE_MULTI
    for name in programs:
        libbpf.check_int(fn(obj.program_ptr(name), kind), f"prepare {name}")


def attach_multi(
    obj: BpfObject,
    program: str,
    binary: str,
    offsets: Sequence[int],
    cookies: Sequence[int],
    *,
    pid: int = -1,
    retprobe: bool = False,
    session: bool = False,
) -> Link:
    """One link probing every file offset of `binary`, each with its cookie (`session`: at
    entry and return, for a program prepared so)."""
    count = len(offsets)
    offset_array = (c_uint64 * count)(*offsets)
    cookie_array = (c_uint64 * count)(*cookies)
    path = c_char_p(binary.encode())
    attr = LinkCreateUprobeMulti(
        prog_fd=obj.program_fd(program),
        attach_type=BPF_TRACE_UPROBE_SESSION if session else BPF_TRACE_UPROBE_MULTI,
        path=ctypes.cast(path, c_void_p).value or 0,
        offsets=ctypes.addressof(offset_array),
        cookies=ctypes.addressof(cookie_array),
        cnt=count,
        multi_flags=BPF_F_UPROBE_MULTI_RETURN if retprobe else 0,
        pid=max(pid, 0),
    )
    nr = BPF_SYSCALL_NR[platform.machine()]  # kernel_supports() checked the architecture
    fd = int(
        libbpf.libc().syscall(
            ctypes.c_long(nr),
            c_int(BPF_LINK_CREATE),
            ctypes.byref(attr),
            c_uint32(ctypes.sizeof(attr)),
        )
    )
    kind = "uprobe session" if session else "uretprobe" if retprobe else "uprobe"
    if fd < 0:
        raise libbpf.os_error(ctypes.get_errno(), f"attach {count} {kind}s in {binary}")
    return obj.own(FdLink(fd, f"{count} {kind}s in {binary}"))


def attach_classic(
    obj: BpfObject,
    program: str,
    binary: str,
    offset: int,
    cookie: int,
    *,
    pid: int = -1,
    retprobe: bool = False,
) -> Link:
    """One classic uprobe at a file offset, carrying `cookie` (bpf_get_attach_cookie)."""
    opts = UprobeOpts(sz=ctypes.sizeof(UprobeOpts), bpf_cookie=cookie, retprobe=retprobe)
    ptr = libbpf.lib().bpf_program__attach_uprobe_opts(
        obj.program_ptr(program), pid, binary.encode(), offset, ctypes.byref(opts)
    )
    kind = "uretprobe" if retprobe else "uprobe"
    return _attach(obj, ptr, f"{kind} {binary}:{hex(offset)}")
