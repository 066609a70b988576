"""Open, configure and load a packaged BPF object; own its programs, maps and links.

The life of an object: `BpfObject.open(name)` -> `set_rodata(...)`, `resize_map(...)`,
`disable(...)` -> `load()` -> attach (runtime.probes) -> read maps -> `close()`. `.rodata`
must be written before load (libbpf silently ignores later writes), so setters refuse after it.
Every live object is tracked so one cleanup path can close them all on exit or on a signal.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
import weakref
from ctypes import c_size_t
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from otlp_ebpf import console
from otlp_ebpf.errors import EnvironmentLacks, RuntimeFailure
from otlp_ebpf.runtime import libbpf
from otlp_ebpf.runtime.libbpf import PRINT_FN, BtfType, BtfVarSecinfo

if TYPE_CHECKING:
    from otlp_ebpf.runtime.maps import BpfMap

BTF_KIND_DATASEC = 15
VERIFIER_LOG_LIMIT = 16 * 1024 * 1024


class LibbpfLog:
    """Collects libbpf's messages (the verifier log among them) for the object being loaded."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        # Keep the callback referenced for the life of the process, or ctypes frees it.
        self._callback = PRINT_FN(self._on_print)

    def _on_print(self, level: int, fmt: bytes | None, va_list: int | None) -> int:
        if fmt is None or not va_list:
            return 0
        text = format_va(fmt, va_list)
        with self._lock:
            if self._size < VERIFIER_LOG_LIMIT:
                self.lines.append(text)
                self._size += len(text)
        if level <= 1:  # LIBBPF_WARN/INFO are worth a --debug line
            console.debug(text.rstrip())
        return 0

    def install(self) -> None:
        libbpf.lib().libbpf_set_print(self._callback)

    def take(self) -> str:
        with self._lock:
            text = "".join(self.lines)
            self.lines.clear()
            self._size = 0
        return text


# On x86_64 a va_list is a pointer to one 24-byte __va_list_tag; copying those bytes is what
# va_copy does, so a message longer than the first buffer can be formatted again in full (the
# whole verifier log arrives as one message, and it can be megabytes).
VA_LIST_BYTES = 24 if platform.machine() == "x86_64" else 0
FIRST_BUFFER = 64 * 1024


def format_va(fmt: bytes, va_list: int) -> str:
    """printf-format one libbpf message."""
    libc = libbpf.libc()
    saved = ctypes.string_at(va_list, VA_LIST_BYTES) if VA_LIST_BYTES else b""
    size = FIRST_BUFFER if VA_LIST_BYTES else 4 * 1024 * 1024
    args = ctypes.create_string_buffer(saved, VA_LIST_BYTES) if VA_LIST_BYTES else None
    buf = ctypes.create_string_buffer(size)
    n = libc.vsnprintf(buf, size, fmt, ctypes.addressof(args) if args else va_list)
    if n >= size and VA_LIST_BYTES and n < VERIFIER_LOG_LIMIT:
        args = ctypes.create_string_buffer(saved, VA_LIST_BYTES)
        buf = ctypes.create_string_buffer(n + 1)
        n = libc.vsnprintf(buf, n + 1, fmt, ctypes.addressof(args))
    text = buf.value.decode("utf-8", "replace")
    return text + "...(truncated)\n" if n >= len(buf) else text


_LOG = LibbpfLog()
_LIVE: weakref.WeakSet[BpfObject] = weakref.WeakSet()


def object_path(name: str) -> Path:
    """Where the packaged object NAME.bpf.o lives (inside the installed package)."""
    return Path(str(resources.files("otlp_ebpf.bpf").joinpath(f"{name}.bpf.o")))


class Link:
    """One attachment. `destroy()` detaches; safe to call twice."""

    def __init__(self, ptr: int, description: str) -> None:
        self._ptr: int | None = ptr
        self.description = description
        self.perf_fd: int | None = None  # a perf event link's event (owned by the link)

    def destroy(self) -> None:
        if self._ptr is not None:
            libbpf.lib().bpf_link__destroy(self._ptr)
            self._ptr = None

    @property
    def attached(self) -> bool:
        return self._ptr is not None

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.destroy()


class BpfObject:
    """One loaded (or about to be loaded) BPF object and everything attached from it."""

    def __init__(self, path: Path) -> None:
        _LOG.install()
        self.path = path
        ptr = libbpf.lib().bpf_object__open_file(str(path).encode(), None)
        if not ptr:
            err = ctypes.get_errno()
            if err == errno.ENOENT and not path.exists():
                raise EnvironmentLacks(
                    f"BPF object {path.name} is missing from the installation",
                    hint="rebuild it: make setup (needs clang)",
                )
            raise RuntimeFailure(f"cannot open BPF object {path.name}: {os.strerror(err)}")
        self._obj: int | None = ptr
        self.loaded = False
        self.links: list[Link] = []
        self._maps: dict[str, BpfMap] = {}
        _LIVE.add(self)

    @classmethod
    def open(cls, name: str) -> BpfObject:
        return cls(object_path(name))

    @property
    def handle(self) -> int:
        if self._obj is None:
            raise RuntimeFailure(f"BPF object {self.path.name} is closed")
        return self._obj

    # -- before load ---------------------------------------------------------------------------

    def program_names(self) -> list[str]:
        names = []
        prog = libbpf.lib().bpf_object__next_program(self.handle, None)
        while prog:
            names.append(libbpf.lib().bpf_program__name(prog).decode())
            prog = libbpf.lib().bpf_object__next_program(self.handle, prog)
        return names

    def section_of(self, program: str) -> str:
        return str(libbpf.lib().bpf_program__section_name(self._program_ptr(program)).decode())

    def _program_ptr(self, name: str) -> int:
        ptr = libbpf.lib().bpf_object__find_program_by_name(self.handle, name.encode())
        if not ptr:
            raise KeyError(f"{self.path.name} has no program {name!r}")
        return int(ptr)

    def _map_ptr(self, name: str) -> int:
        ptr = libbpf.lib().bpf_object__find_map_by_name(self.handle, name.encode())
        if not ptr:
            raise KeyError(f"{self.path.name} has no map {name!r}")
        return int(ptr)

    def _require_unloaded(self, what: str) -> None:
        if self.loaded:
            raise RuntimeError(f"{what} must happen before load (libbpf ignores it afterwards)")

    def disable(self, program: str) -> None:
        """Do not load `program` (its hook is missing here); the rest of the object still loads."""
        self._require_unloaded("disabling a program")
        libbpf.check_int(
            libbpf.lib().bpf_program__set_autoload(self._program_ptr(program), False), "autoload"
        )

    def enabled(self, program: str) -> bool:
        return bool(libbpf.lib().bpf_program__autoload(self._program_ptr(program)))

    def resize_map(self, name: str, max_entries: int) -> None:
        self._require_unloaded("resizing a map")
        libbpf.check_int(
            libbpf.lib().bpf_map__set_max_entries(self._map_ptr(name), max_entries),
            f"resize {name}",
        )

    def rodata_layout(self) -> dict[str, tuple[int, int]]:
        """Name -> (offset, size) of every variable in `.rodata`, read from the object's BTF."""
        btf = libbpf.lib().bpf_object__btf(self.handle)
        if not btf:
            return {}
        sec_id = libbpf.lib().btf__find_by_name_kind(btf, b".rodata", BTF_KIND_DATASEC)
        if sec_id < 0:
            return {}
        sec = BtfType.from_address(libbpf.lib().btf__type_by_id(btf, sec_id))
        vlen = sec.info & 0xFFFF
        base = ctypes.addressof(sec) + ctypes.sizeof(BtfType)
        layout = {}
        for i in range(vlen):
            info = BtfVarSecinfo.from_address(base + i * ctypes.sizeof(BtfVarSecinfo))
            var = BtfType.from_address(libbpf.lib().btf__type_by_id(btf, info.type))
            name = libbpf.lib().btf__name_by_offset(btf, var.name_off).decode()
            layout[name] = (info.offset, info.size)
        return layout

    def set_rodata(self, **values: int | bool | bytes) -> None:
        """Write `const volatile` globals by name before load (integers little-endian)."""
        self._require_unloaded("setting .rodata")
        if not values:
            return
        layout = self.rodata_layout()
        map_ptr = self._find_rodata_map()
        size = c_size_t(0)
        data = libbpf.lib().bpf_map__initial_value(map_ptr, ctypes.byref(size))
        if not data:
            raise RuntimeFailure(f"{self.path.name}: .rodata has no initial value")
        for name, value in values.items():
            if name not in layout:
                raise KeyError(f"{self.path.name} has no .rodata variable {name!r}")
            offset, width = layout[name]
            raw = value if isinstance(value, bytes) else _encode_int(int(value), width)
            if len(raw) > width:
                raise ValueError(f"{name}: {len(raw)} bytes do not fit in {width}")
            ctypes.memmove(data + offset, raw.ljust(width, b"\0"), width)

    def _find_rodata_map(self) -> int:
        mp = libbpf.lib().bpf_object__next_map(self.handle, None)
        while mp:
            if libbpf.lib().bpf_map__name(mp).decode().endswith(".rodata"):
                return int(mp)
            mp = libbpf.lib().bpf_object__next_map(self.handle, mp)
        raise KeyError(f"{self.path.name} has no .rodata map")

    # -- load ----------------------------------------------------------------------------------

    def load(self) -> None:
        _LOG.take()
        ret = libbpf.lib().bpf_object__load(self.handle)
        log = _LOG.take()
        if ret < 0:
            raise load_error(self.path.name, -ret, log)
        self.loaded = True

    # -- after load ----------------------------------------------------------------------------

    def program_fd(self, name: str) -> int:
        return libbpf.check_int(libbpf.lib().bpf_program__fd(self._program_ptr(name)), name)

    def program_ptr(self, name: str) -> int:
        return self._program_ptr(name)

    def map(self, name: str) -> BpfMap:
        from otlp_ebpf.runtime.maps import BpfMap

        if name not in self._maps:
            self._maps[name] = BpfMap(self._map_ptr(name))
        return self._maps[name]

    def own(self, link: Link) -> Link:
        self.links.append(link)
        return link

    def release(self, link: Link) -> None:
        """Detach one link before the object closes (a duty cycle's window ends)."""
        link.destroy()
        if link in self.links:
            self.links.remove(link)

    def detach_all(self) -> None:
        while self.links:
            self.links.pop().destroy()

    def close(self) -> None:
        """Detach every link, then free the object (programs and maps go with their fds)."""
        self.detach_all()
        if self._obj is not None:
            libbpf.lib().bpf_object__close(self._obj)
            self._obj = None
        _LIVE.discard(self)

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def close_all() -> None:
    """The one cleanup path for signals and exit: every live object closes (idempotent)."""
    for obj in list(_LIVE):
        obj.close()


def verifier_reason(log: str) -> str:
    """The verifier's own complaint: the last line of the program's load log that is not
    its statistics (libbpf frames that log with BEGIN/END PROG LOAD LOG markers)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    end = next((i for i, ln in enumerate(lines) if "END PROG LOAD LOG" in ln), len(lines))
    for line in reversed(lines[:end]):
        if not line.startswith(("processed ", "verification time", "stack depth", "--")):
            return line
    return lines[-1] if lines else ""


def _privileged() -> bool:
    from otlp_ebpf.runtime.privileges import privileged

    return privileged()


def _encode_int(value: int, width: int) -> bytes:
    return value.to_bytes(width, "little", signed=value < 0)


def load_error(name: str, err: int, log: str) -> Exception:
    """Turn a failed load into the error users should see; the verifier log rides along."""
    # The verifier also answers EACCES for a program it rejects: only an unprivileged caller
    # is told about privileges.
    if err in (errno.EPERM, errno.EACCES) and not _privileged():
        exc: Exception = EnvironmentLacks(
            f"not allowed to load BPF programs ({os.strerror(err)})",
            hint="run as root or grant CAP_BPF and CAP_PERFMON; `otlp-ebpf doctor` checks",
        )
    else:
        reason = verifier_reason(log)
        exc = RuntimeFailure(
            f"loading {name} failed: {os.strerror(err)}" + (f" ({reason})" if reason else ""),
            hint="rerun with --debug for the full verifier log",
        )
    exc.verifier_log = log  # type: ignore[attr-defined]
    if log:
        console.debug(log)
    return exc
