"""Which file holds a process's C allocator, so the mem collector knows where to put uprobes.

The allocator is whichever loaded object defines `malloc` first in symbol-lookup order: the
executable itself (static binaries, programs linking their own allocator), then preloaded or
linked allocator libraries (jemalloc, tcmalloc, mimalloc), then libc. Paths are reached
through /proc/PID/root so a process in a container resolves to the file it really maps.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from otlp_ebpf.errors import UsageError

SHN_UNDEF = "SHN_UNDEF"


def defines_symbol(path: str, name: str = "malloc") -> bool:
    """True when the ELF file at `path` defines function `name` (in .dynsym or .symtab)."""
    try:
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            for section_name in (".dynsym", ".symtab"):
                section = elf.get_section_by_name(section_name)
                if not isinstance(section, SymbolTableSection):
                    continue
                for symbol in section.get_symbol_by_name(name) or ():
                    if symbol["st_shndx"] != SHN_UNDEF and symbol["st_info"]["type"] == "STT_FUNC":
                        return True
    except (OSError, ELFError, ValueError):
        return False
    return False


def is_libc(path: str) -> bool:
    base = os.path.basename(path)
    return base.startswith("libc.so") or base.startswith("libc-")


def mapped_files(pid: int, proc_root: str = "/proc") -> list[str]:
    """Distinct file paths mapped executable by `pid`, in address order."""
    try:
        # Paths stay openable: undecodable bytes held as surrogates.
        text = Path(f"{proc_root}/{pid}/maps").read_text(errors="surrogateescape")
    except OSError as exc:
        raise UsageError(f"no such process: {pid}") from exc
    paths: list[str] = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and "x" in parts[1] and parts[5].startswith("/"):
            path = parts[5].removesuffix(" (deleted)")
            if path not in paths:
                paths.append(path)
    return paths


def lookup_order(exe: str, libraries: Iterable[str]) -> list[str]:
    """The executable, then allocator-looking libraries, then the rest with libc last."""
    rest = [p for p in libraries if p != exe]
    others = [p for p in rest if not is_libc(p)]
    return [exe, *others, *[p for p in rest if is_libc(p)]]


def allocator_of_process(pid: int, proc_root: str = "/proc") -> str:
    """Path (under /proc/PID/root) of the file that defines `malloc` for process `pid`."""
    root = f"{proc_root}/{pid}/root"
    try:
        exe = os.readlink(f"{proc_root}/{pid}/exe").removesuffix(" (deleted)")
    except OSError as exc:
        raise UsageError(f"no such process: {pid}") from exc
    for path in lookup_order(exe, mapped_files(pid, proc_root)):
        if defines_symbol(root + path):
            return root + path
    raise UsageError(f"process {pid} has no C allocator (no mapped file defines malloc)")


def own_libc(proc_root: str = "/proc") -> str:
    """The libc this process uses: the one a command started from here will load too."""
    for path in mapped_files(os.getpid(), proc_root):
        if is_libc(path):
            return path
    raise UsageError("cannot find the C library in this process's mappings")


def allocator_of_command(path: str) -> str:
    """Where the allocator of a not-yet-started command will be: the executable itself when it
    defines malloc (static or self-contained), otherwise the system libc."""
    if defines_symbol(path):
        return path
    return own_libc()


# `test %rdi, %rdi`: glibc's free begins with it. The kernel cannot emulate it, so a uprobe
# there single-steps a copy of it, measured at ~15 us per call in a VM against ~0.5 us for
# a probe on the next instruction (a conditional jump, which is emulated). It changes no
# argument register, so the probe on the next instruction sees the same call.
_SKIPPABLE_PROLOGUES = (bytes.fromhex("4885ff"),)


def function_offsets(path: str, names: Iterable[str]) -> dict[str, int]:
    """File offsets of the functions of `names` that ELF `path` defines."""
    found: dict[str, int] = {}
    try:
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            tables = _symbol_tables(elf)
            for name in names:
                vaddr = _symbol_value(tables, name)
                if vaddr is None:
                    continue
                for segment in loads:
                    start = segment["p_vaddr"]
                    if start <= vaddr < start + segment["p_filesz"]:
                        found[name] = int(vaddr - start + segment["p_offset"])
                        break
    except (OSError, ELFError, ValueError):
        return found
    return found


def _symbol_tables(elf: ELFFile) -> list[SymbolTableSection]:
    """.dynsym then .symtab, each fetched once: pyelftools indexes a table's names on its first
    lookup by name, and a section fetched again is indexed again (1.4 s for libc's 12 names)."""
    tables = [elf.get_section_by_name(name) for name in (".dynsym", ".symtab")]
    return [t for t in tables if isinstance(t, SymbolTableSection)]


def _symbol_value(tables: list[SymbolTableSection], name: str) -> int | None:
    for section in tables:
        for symbol in section.get_symbol_by_name(name) or ():
            if symbol["st_shndx"] != SHN_UNDEF and symbol["st_value"]:
                return int(symbol["st_value"])
    return None


def cheap_probe_offset(path: str, offset: int, machine: str) -> int:
    """Where a uprobe on the function at file `offset` costs least: past a leading instruction
    that the kernel would have to single-step and that leaves the arguments alone."""
    if machine != "x86_64":
        return offset
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            head = fh.read(8)
    except OSError:
        return offset
    for prologue in _SKIPPABLE_PROLOGUES:
        if head.startswith(prologue):
            return offset + len(prologue)
    return offset
