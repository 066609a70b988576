"""Line tables, module names and the placing of Python frames among native ones."""

from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

import pytest

from otlp_ebpf.symbolize.python import (
    DEBUG_COOKIE,
    DEBUG_OFFSETS_BYTES,
    EVAL_FRAME,
    FRAME_LASTI_MAX,
    CodeInfo,
    PyFrame,
    decode_line_table,
    interpreter_version,
    layout_from_debug_offsets,
    merge_python_frames,
    module_name,
)

PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"

# Code with loops, branches, a long function and blank lines: every instruction's line from the
# interpreter itself, next to the raw table.
DUMP = r"""
import dis, json, sys
SOURCE = '''
def f(n):
    total = 0
    for i in range(n):
        if i % 3:
            total += i
        else:
            total -= 1


    while total > 0:
        total //= 2
    return [x * 2 for x in range(total)]
'''
for i in range(5):  # line gaps of every size the tables encode in one or several steps
    SOURCE += f"def g{i}(a):\n    b = a + {i}\n" + "\n" * (i * 40) + "    return b\n"
ns = {}
exec(compile(SOURCE, "m.py", "exec"), ns)
out = []
for name in ["f"] + [f"g{i}" for i in range(5)]:
    code = ns[name].__code__
    table = code.co_linetable if sys.version_info >= (3, 10) else code.co_lnotab
    starts = dict(dis.findlinestarts(code))
    lines, line = [], None
    # What a frame's instruction index counts: bytes before 3.10, code units after.
    for offset in range(0, len(code.co_code), 2):
        line = starts.get(offset, line)
        lines.append((offset // 2 if sys.version_info >= (3, 10) else offset, line))
    out.append((table.hex(), code.co_firstlineno, lines))
print(json.dumps(out))
"""


def installed(version: str) -> str:
    found = sorted(glob.glob(str(PYENV / f"{version}.*" / "bin" / f"python{version}")))
    if not found:
        pytest.skip(f"CPython {version} is not installed under {PYENV}")
    return found[-1]


@pytest.mark.parametrize("version", ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"])
def test_line_tables_decode_like_the_interpreter(version: str) -> None:
    python = installed(version)
    dumped = json.loads(
        subprocess.run([python, "-c", DUMP], capture_output=True, check=True).stdout
    )
    v = tuple(int(x) for x in version.split("."))
    assert len(dumped) == 6
    for table_hex, first, lines in dumped:
        info = CodeInfo(
            "m", "f", "m.py", first, decode_line_table(bytes.fromhex(table_hex), first, v)
        )
        for lasti, line in lines:
            if line is None:
                continue
            assert info.line_at(lasti, v) == line, (version, lasti, line)


def test_unknown_instruction_index_gives_the_first_line() -> None:
    info = CodeInfo("m", "f", "m.py", 42, ())
    assert info.line_at(FRAME_LASTI_MAX, (3, 11)) == 42


def test_interpreter_file_names() -> None:
    assert interpreter_version("/usr/bin/python3.11") == (3, 11)
    assert interpreter_version("/x/lib/libpython3.12.so.1.0") == (3, 12)
    assert interpreter_version("/x/lib/libpython3.7m.so.1.0") == (3, 7)
    assert interpreter_version("/usr/lib/libpythonista.so") is None
    assert interpreter_version("/usr/bin/python3-config") is None


def test_module_names_follow_packages(tmp_path: Path) -> None:
    pkg = tmp_path / "shop" / "cart"
    pkg.mkdir(parents=True)
    (tmp_path / "shop" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    assert module_name(str(pkg / "totals.py")) == "shop.cart.totals"
    assert module_name(str(pkg / "__init__.py")) == "shop.cart"
    assert module_name(str(tmp_path / "app.py")) == "app"
    assert module_name("<frozen importlib._bootstrap>") == "importlib._bootstrap"
    assert module_name("<string>") == "<string>"


def frame(name: str, entry: bool = False) -> PyFrame:
    return PyFrame(name, "/app.py", entry)


NATIVE_311 = [  # leaf first: a C function called from Python, under one evaluation call
    ("clock_gettime", "libc"),
    ("PyObject_Vectorcall", "python"),
    (EVAL_FRAME, "python"),
    ("PyEval_EvalCode", "python"),
    ("main", "python"),
]


def test_one_evaluation_call_runs_many_python_frames() -> None:
    python = [frame("spin"), frame("a"), frame("main"), frame("<module>", entry=True)]
    merged = [name for name, _ in merge_python_frames(NATIVE_311, python)]
    assert merged == [
        "clock_gettime",
        "PyObject_Vectorcall",
        "spin",
        "a",
        "main",
        "<module>",
        "PyEval_EvalCode",
        "main",
    ]


def test_each_evaluation_call_gets_its_own_python_frames() -> None:
    native = [
        ("hot_c", "ext"),
        (EVAL_FRAME, "python"),
        ("call_function", "python"),
        (EVAL_FRAME, "python"),
        ("main", "python"),
    ]
    python = [frame("inner", entry=True), frame("outer", entry=True)]
    merged = [name for name, _ in merge_python_frames(native, python)]
    assert merged == ["hot_c", "inner", "call_function", "outer", "main"]


def test_a_native_unwind_cut_short_keeps_python_callers_at_the_root() -> None:
    native = [("hot_c", "ext")]
    python = [frame("inner", entry=True), frame("outer", entry=True)]
    merged = [name for name, _ in merge_python_frames(native, python)]
    assert merged == ["hot_c", "inner", "outer"]


def test_an_evaluation_call_not_started_yet_keeps_callers_right() -> None:
    """Sampled in the prologue of an evaluation call (its frame not linked yet): with a whole
    native stack, pairing from the root keeps every Python frame under its own call."""
    native = [
        (EVAL_FRAME, "python"),  # the new call, no Python frame yet
        ("gen_iternext", "python"),
        (EVAL_FRAME, "python"),
        ("Py_RunMain", "python"),
        ("_start", "python"),
    ]
    python = [frame("made_later"), frame("<module>", entry=True)]
    merged = [name for name, _ in merge_python_frames(native, python)]
    assert merged == [EVAL_FRAME, "gen_iternext", "made_later", "<module>", "Py_RunMain", "_start"]


def test_without_python_frames_native_frames_stay() -> None:
    assert merge_python_frames(NATIVE_311, []) == NATIVE_311


def debug_offsets(version: int, free_threaded: int = 0) -> bytes:
    """A _Py_DebugOffsets image whose every other field holds its own index."""
    count = (DEBUG_OFFSETS_BYTES - 8) // 8
    words = [version, free_threaded, *range(2, count)]
    return DEBUG_COOKIE + b"".join(w.to_bytes(8, "little") for w in words)


def test_debug_offsets_of_313_give_a_layout() -> None:
    found = layout_from_debug_offsets(debug_offsets(0x030D00F0))
    assert found is not None
    version, layout = found
    assert version == (3, 13)
    # Field indexes in the 3.13 structure: runtime.interpreters_head is the 5th word after the
    # cookie (index 4), tstate.current_frame the 23rd (22), code.co_code_adaptive the 43rd.
    assert layout["runtime_interpreters_head"] == 4
    assert layout["tstate_frame"] == 22
    assert layout["code_adaptive"] == 42
    assert layout["unicode_compact_data"] == layout["unicode_ascii_data"] + 16
    assert layout["cframe_current_frame"] == -1


@pytest.mark.parametrize(
    "image",
    [
        b"",
        b"notdebug" + debug_offsets(0x030D00F0)[8:],
        debug_offsets(0x030E00F0),  # 3.14 lays the structure out differently
        debug_offsets(0x030D00F0, free_threaded=1),
        debug_offsets(0x030D00F0)[:-8],
    ],
)
def test_debug_offsets_not_understood_are_refused(image: bytes) -> None:
    assert layout_from_debug_offsets(image) is None


def test_line_table_numbers_beyond_64_bits_are_kept_clamped() -> None:
    """A torn read may decode to any number: the compact table keeps it without failing."""
    huge = 1 << 80
    info = CodeInfo("m", "f", "m.py", 7, ((0, huge, huge), (huge, huge + 2, None)))
    assert info.line_at(0, (3, 11)) == (1 << 63) - 1
    assert CodeInfo("m", "f", "m.py", 7, ((0, 4, None),)).line_at(0, (3, 11)) == 7
