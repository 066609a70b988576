"""CPython processes: finding the interpreter, naming code objects, placing Python frames.

- `find_interpreter` tells whether a process runs CPython (the executable, statically linked,
  or a libpython it maps), which version, and where its `_PyRuntime` lives; the layout of that
  version's structures comes from symbolize/python_layouts.py (generated from each version's
  own headers by tools/gen_python_layouts.py).
- `CodeReader` names the code objects the BPF frame walk (bpf/python.h) reports, reading the
  process's memory through /proc/PID/mem while it lives: qualified name, file, and the line of
  the instruction from the code object's line table (each version's format). Results are kept
  in a bounded cache.
- `merge_python_frames` puts Python frames in place of the interpreter's evaluation-loop
  frames of a native stack, so native callers and callees (C extensions) stay around them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.hash import ELFHashSection, GNUHashSection
from elftools.elf.sections import SymbolTableSection

from otlp_ebpf import hosttext
from otlp_ebpf.symbolize.procmaps import Mapping, OpenFiles, ProcessMaps
from otlp_ebpf.symbolize.python_layouts import LAYOUTS
from otlp_ebpf.symbolize.python_source import SourceQualnames, source_path

EVAL_FRAME = "_PyEval_EvalFrameDefault"
RUNTIME_SYMBOL = "_PyRuntime"
CODE_TYPE_SYMBOL = "PyCode_Type"
PYTHON_MODULE = "[python]"
# Frame words from the BPF walk (bpf/python.h).
FRAME_ADDR_MASK = (1 << 48) - 1
FRAME_LASTI_SHIFT = 48
FRAME_LASTI_MAX = 0x7FFF
FRAME_ENTRY = 1 << 63
# Names of the files that may hold the interpreter: python3.11, libpython3.11.so.1.0, ...
_INTERPRETER_FILE = re.compile(r"^(?:lib)?python(\d+)\.(\d+)[a-z]*(?:\.so[.\d]*|-[\w.-]*)?$")
_MAX_STRING = 4096
_MAX_LINE_TABLE = 1 << 20
CODE_CACHE_ENTRIES = 4096
# A range of a line table without a line of its own (below any clamped line).
_NO_LINE = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
UNKNOWN_CODE = "[unknown python code]"


@dataclass(frozen=True)
class Interpreter:
    """A CPython process: its version, where `_PyRuntime` and `PyCode_Type` are at run time,
    and the file that holds them."""

    version: tuple[int, int]
    runtime: int
    code_type: int
    path: str
    # The layout the interpreter publishes itself (_Py_DebugOffsets, 3.13+), when read.
    published: tuple[tuple[str, int], ...] = ()

    @property
    def supported(self) -> bool:
        return bool(self.published) or self.version in LAYOUTS

    @property
    def layout(self) -> dict[str, int]:
        return dict(self.published) if self.published else LAYOUTS[self.version]

    @property
    def layout_source(self) -> str:
        return "_Py_DebugOffsets" if self.published else "headers"


@dataclass(frozen=True)
class PyFrame:
    """One Python frame, named: `module.qualname (file.py:line)`."""

    name: str
    path: str
    entry: bool  # the first frame of a C-level evaluation call


def interpreter_version(path: str) -> tuple[int, int] | None:
    """(major, minor) from an interpreter file's name, or None when it names none."""
    match = _INTERPRETER_FILE.match(os.path.basename(path))
    return (int(match.group(1)), int(match.group(2))) if match else None


def find_interpreter(maps: ProcessMaps, files: OpenFiles) -> Interpreter | None:
    """The CPython interpreter in a process's mappings, or None when it runs none."""
    seen: set[str] = set()
    for mapping in maps.mappings:
        if not mapping.executable or mapping.file_id is None or mapping.path in seen:
            continue
        if not files.is_open(mapping.file_id):
            continue
        seen.add(mapping.path)
        version = interpreter_version(mapping.path)
        if version is None or version[0] != 3:
            continue
        symbols = _interpreter_symbols(files.path_of(mapping.file_id), mapping.file_id)
        if symbols is None:
            continue
        bias = _load_bias(mapping, symbols[2])
        return Interpreter(version, bias + symbols[0], bias + symbols[1], mapping.path)
    return None


_SYMBOL_CACHE: dict[object, tuple[int, int, tuple[tuple[int, int, int], ...]] | None] = {}


def _interpreter_symbols(
    path: str, key: object
) -> tuple[int, int, tuple[tuple[int, int, int], ...]] | None:
    """(_PyRuntime vaddr, PyCode_Type vaddr, (p_vaddr, p_offset, p_filesz) of each LOAD
    segment), or None when the file defines no interpreter."""
    if key in _SYMBOL_CACHE:
        return _SYMBOL_CACHE[key]
    found: dict[str, int] = {}
    segments: tuple[tuple[int, int, int], ...] = ()
    try:
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            segments = tuple(
                (seg["p_vaddr"], seg["p_offset"], seg["p_filesz"])
                for seg in elf.iter_segments()
                if seg["p_type"] == "PT_LOAD"
            )
            # The dynamic symbols' hash table answers in microseconds; a symbol table is read
            # whole (~0.25 s for libpython) only when the file has none or lacks the names.
            hashed = elf.get_section_by_name(".gnu.hash")
            if isinstance(hashed, (GNUHashSection, ELFHashSection)):
                for wanted in (RUNTIME_SYMBOL, CODE_TYPE_SYMBOL):
                    sym = hashed.get_symbol(wanted)
                    if sym is not None and sym["st_value"]:
                        found[wanted] = sym["st_value"]
            for name in (".dynsym", ".symtab"):
                if len(found) == 2:
                    break
                section = elf.get_section_by_name(name)
                if not isinstance(section, SymbolTableSection):
                    continue
                for wanted in (RUNTIME_SYMBOL, CODE_TYPE_SYMBOL):
                    if wanted in found:
                        continue
                    for sym in section.get_symbol_by_name(wanted) or ():
                        if sym["st_value"]:
                            found[wanted] = sym["st_value"]
                            break
    except (OSError, ELFError):
        pass
    result = None
    if RUNTIME_SYMBOL in found and CODE_TYPE_SYMBOL in found:
        result = (found[RUNTIME_SYMBOL], found[CODE_TYPE_SYMBOL], segments)
    _SYMBOL_CACHE[key] = result
    return result


_NEEDS_CACHE: dict[tuple[int, int], bool] = {}
_NEEDS_CACHE_ENTRIES = 1024


def needs_libpython(exe: str) -> bool:
    """Whether a program file names a shared libpython3 among the libraries it needs (the
    loader maps it after the exec, a moment after the program starts). Cached by file."""
    try:
        st = os.stat(exe)
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    if key not in _NEEDS_CACHE:
        if len(_NEEDS_CACHE) >= _NEEDS_CACHE_ENTRIES:
            _NEEDS_CACHE.clear()
        _NEEDS_CACHE[key] = _names_libpython(exe)
    return _NEEDS_CACHE[key]


def _names_libpython(exe: str) -> bool:
    try:
        with open(exe, "rb") as fh:
            dynamic = ELFFile(fh).get_section_by_name(".dynamic")
            if not isinstance(dynamic, DynamicSection):
                return False
            for tag in dynamic.iter_tags("DT_NEEDED"):
                version = interpreter_version(str(getattr(tag, "needed", "")))
                if version is not None and version[0] == 3:
                    return True
    except (OSError, ELFError, ValueError):
        pass
    return False


def _load_bias(mapping: Mapping, segments: tuple[tuple[int, int, int], ...]) -> int:
    """Run-time address minus link-time address for the file behind `mapping` (the loader
    maps every segment with the same bias): from the LOAD segment holding its offset."""
    for vaddr, offset, filesz in segments:
        if offset <= mapping.offset < offset + filesz:
            return mapping.start - mapping.offset - (vaddr - offset)
    return mapping.start - mapping.offset


# -- _Py_DebugOffsets (3.13+) ---------------------------------------------------------------

DEBUG_COOKIE = b"xdebugpy"
# The fields of _Py_DebugOffsets in 3.13 (Include/internal/pycore_runtime.h), all uint64_t
# after the 8-byte cookie, in order, by group.
_DEBUG_GROUPS_313: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("", ("version", "free_threaded")),
    ("runtime", ("size", "finalizing", "interpreters_head")),
    (
        "interp",
        (
            "size",
            "id",
            "next",
            "threads_head",
            "gc",
            "imports_modules",
            "sysdict",
            "builtins",
            "ceval_gil",
            "gil_runtime_state",
            "gil_enabled",
            "gil_locked",
            "gil_holder",
        ),
    ),
    (
        "tstate",
        (
            "size",
            "prev",
            "next",
            "interp",
            "current_frame",
            "thread_id",
            "native_thread_id",
            "datastack_chunk",
            "status",
        ),
    ),
    ("frame", ("size", "previous", "executable", "instr_ptr", "localsplus", "owner")),
    (
        "code",
        (
            "size",
            "filename",
            "name",
            "qualname",
            "linetable",
            "firstlineno",
            "argcount",
            "localsplusnames",
            "localspluskinds",
            "co_code_adaptive",
        ),
    ),
    ("object", ("size", "ob_type")),
    ("type", ("size", "tp_name", "tp_repr", "tp_flags")),
    ("tuple", ("size", "ob_item", "ob_size")),
    ("list", ("size", "ob_item", "ob_size")),
    ("dict", ("size", "ma_keys", "ma_values")),
    ("float", ("size", "ob_fval")),
    ("long", ("size", "lv_tag", "ob_digit")),
    ("bytes", ("size", "ob_size", "ob_sval")),
    ("unicode", ("size", "state", "length", "asciiobject_size")),
)
_DEBUG_FIELDS_313 = tuple(
    f"{group}.{name}" if group else name for group, names in _DEBUG_GROUPS_313 for name in names
)
DEBUG_OFFSETS_BYTES = len(DEBUG_COOKIE) + 8 * len(_DEBUG_FIELDS_313)


def layout_from_debug_offsets(data: bytes) -> tuple[tuple[int, int], dict[str, int]] | None:
    """((major, minor), layout) from the _Py_DebugOffsets at the start of _PyRuntime, or None
    when it is absent or of a version whose structure is not known here (only 3.13's is;
    a free-threaded build's frame walk differs and is not supported)."""
    if len(data) < DEBUG_OFFSETS_BYTES or not data.startswith(DEBUG_COOKIE):
        return None
    values = {
        name: int.from_bytes(data[8 + 8 * i : 16 + 8 * i], "little")
        for i, name in enumerate(_DEBUG_FIELDS_313)
    }
    hexversion = values["version"]
    version = (hexversion >> 24, (hexversion >> 16) & 0xFF)
    if version != (3, 13) or values["free_threaded"]:
        return None
    layout = {
        "runtime_interpreters_head": values["runtime.interpreters_head"],
        "interp_tstate_head": values["interp.threads_head"],
        "tstate_next": values["tstate.next"],
        "tstate_thread_id": values["tstate.thread_id"],
        "tstate_frame": values["tstate.current_frame"],
        "cframe_current_frame": -1,
        "frame_back": values["frame.previous"],
        "frame_code": values["frame.executable"],
        "frame_lasti": values["frame.instr_ptr"],
        "frame_is_entry": -1,
        "frame_owner": values["frame.owner"],
        "code_adaptive": values["code.co_code_adaptive"],
        "code_qualname": values["code.qualname"],
        "code_linetable": values["code.linetable"],
        "code_filename": values["code.filename"],
        "code_name": values["code.name"],
        "code_firstlineno": values["code.firstlineno"],
        "unicode_length": values["unicode.length"],
        "unicode_state": values["unicode.state"],
        "unicode_ascii_data": values["unicode.asciiobject_size"],
        # PyCompactUnicodeObject adds utf8_length and utf8 to PyASCIIObject.
        "unicode_compact_data": values["unicode.asciiobject_size"] + 16,
        "bytes_size": values["bytes.ob_size"],
        "bytes_data": values["bytes.ob_sval"],
    }
    return version, layout


def with_published_layout(interp: Interpreter, runtime_bytes: bytes) -> Interpreter:
    """The interpreter with the layout it publishes itself, when it does (3.13+)."""
    found = layout_from_debug_offsets(runtime_bytes)
    if found is None or found[0] != interp.version:
        return interp
    return dataclasses.replace(interp, published=tuple(found[1].items()))


# -- code objects -------------------------------------------------------------------------------


def _int64(value: int) -> int:
    return max(-_INT64_MAX, min(_INT64_MAX, value))


@dataclass(frozen=True)
class CodeInfo:
    module: str
    qualname: str
    filename: str
    firstlineno: int
    lines: InitVar[Sequence[tuple[int, int, int | None]]]  # (start, end, line), table units
    # The ranges as one flat array (start, end, line)*: 24 bytes a range instead of ~150 as
    # tuples of ints; the cache holds thousands of code objects with hundreds of ranges each.
    _ranges: array[int] = field(init=False, repr=False, compare=False)
    _starts: array[int] = field(init=False, repr=False, compare=False)  # bisected per lookup

    def __post_init__(self, lines: Sequence[tuple[int, int, int | None]]) -> None:
        flat = array("q")
        starts = array("q")
        last = -(1 << 63)
        for start, end, line in lines:
            # A torn or hostile table may decode to any size of number: keep it in 64 bits,
            # and in order (a range starting before the previous one is not kept).
            start = _int64(start)
            if start < last:
                continue
            last = start
            starts.append(start)
            flat.extend((start, _int64(end), _NO_LINE if line is None else _int64(line)))
        object.__setattr__(self, "_ranges", flat)
        object.__setattr__(self, "_starts", starts)

    def line_at(self, lasti: int, version: tuple[int, int]) -> int:
        """Source line of instruction index `lasti` (bytes before 3.10, code units after)."""
        if lasti == FRAME_LASTI_MAX:
            return self.firstlineno
        # The tables count bytes before 3.11 (3.10's f_lasti counts code units).
        unit = lasti * 2 if version == (3, 10) else lasti
        # The last range starting at or before the instruction; an instruction without a line
        # of its own (a range with none) keeps the line before.
        ranges = self._ranges
        index = bisect_right(self._starts, unit) - 1
        while index >= 0:
            line = ranges[3 * index + 2]
            if line != _NO_LINE:
                return line
            index -= 1
        return self.firstlineno


@dataclass
class _CachedCode:
    info: CodeInfo | None
    fingerprint: bytes
    checked: int  # the reader's generation when last found unchanged


def _code_head_size(lay: dict[str, int]) -> int:
    return max(v for k, v in lay.items() if k.startswith("code_")) + 8


_FINGERPRINT_FIELDS = ("code_name", "code_qualname", "code_filename", "code_linetable")


def _fingerprint(raw: bytes, lay: dict[str, int]) -> bytes:
    """What tells one code object from another at the same address: its type, the objects
    holding its names and line table, and its first line."""
    parts = [raw[8:16], raw[lay["code_firstlineno"] :][:4]]
    parts += [raw[lay[f] :][:8] for f in _FINGERPRINT_FIELDS if lay[f] >= 0]
    return b"".join(parts)


class CodeReader:
    """Names the code objects of CPython processes, from their memory, with a bounded cache
    keyed by (pid, address): a code object lives as long as its function, so the first read
    while the process runs names it for the rest of the run."""

    def __init__(self, max_entries: int = CODE_CACHE_ENTRIES, proc_root: str = "/proc") -> None:
        self.max_entries = max_entries
        self.proc_root = proc_root
        self._cache: OrderedDict[tuple[int, int], _CachedCode] = OrderedDict()
        self._by_image: OrderedDict[tuple[int, int], CodeInfo] = OrderedDict()
        self._fds: dict[int, int] = {}
        self._modules: dict[tuple[int, str], str] = {}
        # Named frames by (pid, frame word): a word is a code object at one instruction, the
        # same in every stack it is part of (dropped as a whole when it grows too big).
        self._frames: dict[tuple[int, int], tuple[CodeInfo | None, PyFrame]] = {}
        self.reads = 0
        self.failed = 0
        self.replaced = 0  # cached code objects found replaced by another at their address
        self.sources = SourceQualnames()  # qualified names before 3.11
        # Bumped by the caller for each batch of frames named together: within one, a cached
        # code object is not read again (samples of one batch are named at one moment).
        self.generation = 0

    def frames(self, pid: int, interp: Interpreter, words: Sequence[int]) -> tuple[PyFrame, ...]:
        """Named frames for the BPF walk's words (leaf first, same order)."""
        out = []
        for word in words:
            info = self.code(pid, interp, word & FRAME_ADDR_MASK)
            key = (pid, word)
            cached = self._frames.get(key)
            if cached is None or cached[0] is not info:
                cached = (info, self._frame(info, interp, word))
                if len(self._frames) >= self.max_entries * 4:
                    self._frames.clear()
                self._frames[key] = cached
            out.append(cached[1])
        return tuple(out)

    @staticmethod
    def _frame(info: CodeInfo | None, interp: Interpreter, word: int) -> PyFrame:
        """One frame word named: a code object at an instruction."""
        lasti = (word >> FRAME_LASTI_SHIFT) & FRAME_LASTI_MAX
        entry = bool(word & FRAME_ENTRY)
        if info is None:
            return PyFrame(UNKNOWN_CODE, PYTHON_MODULE, entry)
        line = info.line_at(lasti, interp.version)
        base = os.path.basename(info.filename)
        name = f"{info.module}.{info.qualname} ({base}:{line})"
        return PyFrame(name, info.filename, entry)

    def code(self, pid: int, interp: Interpreter, addr: int) -> CodeInfo | None:
        """The code object at `addr` in `pid`, named. A cached one is checked again (one read
        of its head) once per `generation`: code objects die (a module's top-level code once
        run, code compiled on the fly) and their memory goes to new ones, which must not take
        the old name."""
        key = (pid, addr)
        cached = self._cache.get(key)
        now = self.generation
        if cached is not None:
            self._cache.move_to_end(key)
            if cached.checked == now or self._unchanged(pid, interp, addr, cached):
                cached.checked = now
                return cached.info
            self.replaced += 1
        self.reads += 1
        fingerprint = b""
        try:
            info, fingerprint = self._read_code(pid, interp, addr)
        except (OSError, ValueError, UnicodeDecodeError):
            info = None
        # Processes forked from one interpreter share its image (same _PyRuntime address) and
        # the code objects created before the fork: a child gone before its code was read is
        # named from what was read in another.
        image_key = (interp.runtime, addr)
        if info is None:
            info = self._by_image.get(image_key)
        else:
            self._by_image[image_key] = info
            if len(self._by_image) > self.max_entries:
                self._by_image.popitem(last=False)
        if info is None:
            self.failed += 1
        self._cache[key] = _CachedCode(info, fingerprint, now)
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return info

    def _unchanged(self, pid: int, interp: Interpreter, addr: int, cached: _CachedCode) -> bool:
        """Whether the code object read before is still the one at `addr` (the same names,
        line table and first line). A process that cannot be read any more (gone) keeps what
        was read while it ran."""
        lay = interp.layout
        try:
            raw = self._read(pid, addr, _code_head_size(lay))
        except (OSError, ValueError):
            return True
        return _fingerprint(raw, lay) == cached.fingerprint

    def forget(self, pid: int) -> None:
        """A process exec'd or exited: its addresses mean something else now."""
        fd = self._fds.pop(pid, None)
        if fd is not None:
            os.close(fd)
        for key in [k for k in self._cache if k[0] == pid]:
            del self._cache[key]
        for module_key in [k for k in self._modules if k[0] == pid]:
            del self._modules[module_key]
        for frame_key in [k for k in self._frames if k[0] == pid]:
            del self._frames[frame_key]

    def forget_image(self, runtime: int) -> None:
        """No process of this interpreter image is left: its code objects are not needed."""
        for key in [k for k in self._by_image if k[0] == runtime]:
            del self._by_image[key]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def runtime_bytes(self, pid: int, interp: Interpreter) -> bytes:
        """The head of the process's _PyRuntime (where 3.13+ publishes _Py_DebugOffsets);
        empty when it cannot be read."""
        try:
            return self._read(pid, interp.runtime, DEBUG_OFFSETS_BYTES)
        except (OSError, ValueError):
            return b""

    def _mem(self, pid: int) -> int:
        fd = self._fds.get(pid)
        if fd is None:
            fd = os.open(f"{self.proc_root}/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            self._fds[pid] = fd
        return fd

    def _read(self, pid: int, addr: int, size: int) -> bytes:
        data = os.pread(self._mem(pid), size, addr)
        if len(data) != size:
            raise ValueError("short read")
        return data

    def _ptr(self, raw: bytes, offset: int) -> int:
        return int.from_bytes(raw[offset : offset + 8], "little")

    def _read_code(self, pid: int, interp: Interpreter, addr: int) -> tuple[CodeInfo | None, bytes]:
        """The code object at `addr` and its fingerprint (see `_unchanged`)."""
        lay = interp.layout
        raw = self._read(pid, addr, _code_head_size(lay))
        fingerprint = _fingerprint(raw, lay)
        if self._ptr(raw, 8) != interp.code_type:
            return None, fingerprint  # not a code object (a stale or torn read)
        name = self._string(pid, lay, self._ptr(raw, lay["code_name"]))
        filename = self._string(pid, lay, self._ptr(raw, lay["code_filename"]))
        first = int.from_bytes(raw[lay["code_firstlineno"] :][:4], "little", signed=True)
        if lay["code_qualname"] >= 0:
            qualname = self._string(pid, lay, self._ptr(raw, lay["code_qualname"]))
        else:
            qualname = self._source_qualname(pid, filename, name, first)
        table = self._bytes(pid, lay, self._ptr(raw, lay["code_linetable"]))
        lines = decode_line_table(table, first, interp.version)
        info = CodeInfo(self._module(pid, filename), qualname, filename, first, lines)
        return info, fingerprint

    def _source_qualname(self, pid: int, filename: str, name: str, firstlineno: int) -> str:
        """Before 3.11 (no co_qualname): the qualified name from the source file, when it
        can be told; the plain name otherwise."""
        path = source_path(filename, pid, self.proc_root)
        found = self.sources.qualname(path, name, firstlineno) if path else None
        return found if found is not None else name

    def _string(self, pid: int, lay: dict[str, int], addr: int) -> str:
        head = self._read(pid, addr, lay["unicode_compact_data"])
        length = int.from_bytes(head[lay["unicode_length"] :][:8], "little", signed=True)
        state = int.from_bytes(head[lay["unicode_state"] :][:4], "little")
        kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
        if not compact or kind not in (1, 2, 4) or not 0 <= length <= _MAX_STRING:
            raise ValueError("not a compact string")
        start = lay["unicode_ascii_data"] if ascii_ else lay["unicode_compact_data"]
        data = self._read(pid, addr + start, length * kind)
        codec = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
        # Any str of that process may hold lone surrogates (a code object's name is anyone's
        # choice): kept as `\\udcxx` text, which every output can encode.
        return hosttext.valid(data.decode(codec, "surrogatepass"))

    def _bytes(self, pid: int, lay: dict[str, int], addr: int) -> bytes:
        size = int.from_bytes(self._read(pid, addr + lay["bytes_size"], 8), "little", signed=True)
        if not 0 <= size <= _MAX_LINE_TABLE:
            raise ValueError("line table size")
        return self._read(pid, addr + lay["bytes_data"], size) if size else b""

    def _module(self, pid: int, filename: str) -> str:
        key = (pid, filename)
        if key not in self._modules:
            self._modules[key] = module_name(filename, f"{self.proc_root}/{pid}/root")
        return self._modules[key]


def module_name(filename: str, root: str = "") -> str:
    """Dotted module name of a source file: its name without `.py`, under the packages (folders
    with an `__init__.py`, looked up under `root`) that hold it. `<frozen x>` is module x."""
    if filename.startswith("<frozen ") and filename.endswith(">"):
        return filename[len("<frozen ") : -1]
    if filename.startswith("<"):
        return filename
    folder, base = os.path.split(filename)
    parts = [base[:-3] if base.endswith(".py") else base]
    if parts[0] == "__init__" and folder:
        folder, parts[0] = os.path.split(folder)
    for _ in range(32):
        if not folder or not os.path.exists(f"{root}{folder}/__init__.py"):
            break
        folder, package = os.path.split(folder)
        parts.insert(0, package)
    return ".".join(parts)


# -- line tables ----------------------------------------------------------------------------------


def decode_line_table(
    table: bytes, firstlineno: int, version: tuple[int, int]
) -> tuple[tuple[int, int, int | None], ...]:
    """(start, end, line) ranges of a code object's line table, in the units the version's
    instruction index uses (bytes up to 3.10, code units from 3.11)."""
    if version >= (3, 11):
        return _locations_table(table, firstlineno)
    if version == (3, 10):
        return _linetable_310(table, firstlineno)
    return _lnotab(table, firstlineno)


def _lnotab(table: bytes, firstlineno: int) -> tuple[tuple[int, int, int | None], ...]:
    """3.8, 3.9 co_lnotab: (byte increment, signed line increment) pairs."""
    out = []
    addr, line = 0, firstlineno
    start = 0
    for i in range(0, len(table) - 1, 2):
        addr_incr, line_incr = table[i], table[i + 1]
        if addr_incr:
            out.append((start, addr + addr_incr, line))
            start = addr + addr_incr
        addr += addr_incr
        line += line_incr - 256 if line_incr >= 128 else line_incr
    out.append((start, 1 << 30, line))
    return tuple(out)


def _linetable_310(table: bytes, firstlineno: int) -> tuple[tuple[int, int, int | None], ...]:
    """3.10 co_linetable: (byte length, signed line delta; -128 = no line) pairs."""
    out: list[tuple[int, int, int | None]] = []
    addr, line = 0, firstlineno
    for i in range(0, len(table) - 1, 2):
        sdelta, ldelta = table[i], table[i + 1]
        current: int | None
        if ldelta == 128:
            current = None
        else:
            line += ldelta - 256 if ldelta > 128 else ldelta
            current = line
        if sdelta:
            out.append((addr, addr + sdelta, current))
        addr += sdelta
    return tuple(out)


def _varint(table: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(table):
        byte = table[pos]
        pos += 1
        value |= (byte & 63) << shift
        shift += 6
        if not byte & 64:
            break
    return value, pos


def _svarint(table: bytes, pos: int) -> tuple[int, int]:
    value, pos = _varint(table, pos)
    return (-(value >> 1) if value & 1 else value >> 1), pos


def _locations_table(table: bytes, firstlineno: int) -> tuple[tuple[int, int, int | None], ...]:
    """3.11+ co_linetable (Objects/locations.md): entries of (code, length in code units) with
    a line delta whose encoding depends on the code."""
    out: list[tuple[int, int, int | None]] = []
    addr, line, pos = 0, firstlineno, 0
    while pos < len(table):
        head = table[pos]
        pos += 1
        code, length = (head >> 3) & 15, (head & 7) + 1
        current: int | None = line
        if code == 15:
            current = None
        elif code == 14:
            delta, pos = _svarint(table, pos)
            line += delta
            current = line
            for _ in range(3):
                _, pos = _varint(table, pos)
        elif code == 13:
            delta, pos = _svarint(table, pos)
            line += delta
            current = line
        elif code >= 10:
            line += code - 10
            current = line
            pos += 2
        else:
            pos += 1
        out.append((addr, addr + length, current))
        addr += length
    return tuple(out)


# -- merging with native frames -------------------------------------------------------------------


def python_groups(frames: Sequence[PyFrame]) -> list[list[PyFrame]]:
    """Leaf-first frames split into the runs of one C-level evaluation call each (a run ends
    with its entry frame); leaf run first."""
    groups: list[list[PyFrame]] = []
    current: list[PyFrame] = []
    for frame in frames:
        current.append(frame)
        if frame.entry:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


# Root frames of a native stack unwound all the way (process and thread entry points).
COMPLETE_STACK_ROOTS = frozenset({"_start", "start_thread", "clone", "clone3", "__clone3"})
TRUNCATED_PYTHON_FRAME = "[python frames truncated]"


def merge_python_frames(
    native: Sequence[tuple[str, str]], python: Sequence[PyFrame]
) -> list[tuple[str, str]]:
    """Leaf-first (name, module) frames: each native evaluation-loop frame replaced by the Python
    frames it was running.

    Evaluation frames and runs of Python frames are paired from the root when both stacks are
    whole (the native one reaches a process or thread entry point, the Python one was not
    cut): a sample in the prologue of an evaluation call, before its frame is linked, then
    keeps its callers right. Otherwise they are paired from the leaf, so a walk cut short on
    either side keeps its leaf side right; Python runs left over (the native unwind stopped
    early) go to the root."""
    if not python:
        return list(native)
    groups = python_groups(python)
    evals = [i for i, (name, _) in enumerate(native) if name == EVAL_FRAME]
    whole = (
        bool(native)
        and native[-1][0] in COMPLETE_STACK_ROOTS
        and python[-1].name != TRUNCATED_PYTHON_FRAME
    )
    if whole and len(evals) > len(groups):
        evals = evals[len(evals) - len(groups) :]  # the leaf-most ones have no frames yet
    assigned = dict(zip(evals, groups, strict=False))
    out: list[tuple[str, str]] = []
    for index, (name, module) in enumerate(native):
        group = assigned.get(index)
        if group is None:
            out.append((name, module))
        else:
            out.extend((f.name, f.path) for f in group)
    for group in groups[len(assigned) :]:
        out.extend((f.name, f.path) for f in group)
    return out
