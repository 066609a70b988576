"""ELF symbol tables, debug files and address translation, on binaries compiled here."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.common.exceptions import ELFError

from otlp_ebpf.symbolize.elf import ElfSymbolizer, demangle

SOURCE = r"""
__asm__(".text\n.globl sym_bare\n.type sym_bare, @function\nsym_bare:\n nop\n nop\n ret\n");
__attribute__((noinline)) int sym_alpha(int x) { return x * 3 + 1; }
__attribute__((noinline)) static int sym_beta(int x) { return sym_alpha(x) ^ 5; }
int main(void) { return sym_beta(1) & 0; }
"""
CPP_SOURCE = r"""
namespace shapes { __attribute__((noinline)) int area(int w, int h) { return w * h; } }
int main() { return shapes::area(2, 3) & 0; }
"""


def _mapped_libc() -> str:
    """The libc this interpreter runs on, whatever the architecture's library directory."""
    with open("/proc/self/maps") as maps:
        paths = (line.split()[-1] for line in maps if "/libc.so" in line)
        return next(paths, "/lib/x86_64-linux-gnu/libc.so.6")


LIBC = _mapped_libc()


def _compile(tmp: Path, name: str, *flags: str, source: str = SOURCE, cc: str = "gcc") -> Path:
    src = tmp / f"{name}.{'cc' if cc == 'g++' else 'c'}"
    src.write_text(source)
    out = tmp / name
    subprocess.run([cc, "-O0", "-g", *flags, "-o", str(out), str(src)], check=True)
    return out


def _nm(path: Path, *flags: str) -> dict[str, int]:
    text = subprocess.run(
        ["nm", "--defined-only", *flags, str(path)], check=True, capture_output=True, text=True
    ).stdout
    return {p[2].split("@")[0]: int(p[0], 16) for p in map(str.split, text.splitlines())}


def _build_id(path: Path) -> str:
    notes = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True).stdout
    return notes.split("Build ID:")[1].split()[0]


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("elf")
    _compile(tmp, "pie", "-pie")
    _compile(tmp, "nopie", "-no-pie")
    return tmp


def test_symbols_resolve_at_the_addresses_nm_reports(binaries: Path) -> None:
    loaded = ElfSymbolizer().load_path(str(binaries / "pie"))
    addrs = _nm(binaries / "pie")
    for name in ("sym_alpha", "sym_beta", "main"):
        assert loaded.symbols.lookup(addrs[name]) == name
        assert loaded.symbols.lookup(addrs[name] + 3) == name
    assert loaded.info.build_id == _build_id(binaries / "pie")
    assert loaded.info.shared
    assert loaded.debug_file == ""


def test_zero_size_symbol_covers_up_to_the_next_symbol(binaries: Path) -> None:
    loaded = ElfSymbolizer().load_path(str(binaries / "pie"))
    bare = _nm(binaries / "pie")["sym_bare"]
    assert loaded.symbols.lookup(bare + 2) == "sym_bare"
    next_start = min(a for a in _nm(binaries / "pie").values() if a > bare)
    assert loaded.symbols.lookup(next_start) != "sym_bare"


def test_file_offsets_translate_to_addresses_for_pie_and_fixed_address_programs(
    binaries: Path,
) -> None:
    for name in ("pie", "nopie"):
        loaded = ElfSymbolizer().load_path(str(binaries / name))
        text = subprocess.run(
            ["readelf", "-SW", str(binaries / name)], check=True, capture_output=True, text=True
        ).stdout
        row = next(line for line in text.splitlines() if " .text " in line).split()
        addr_field = row.index(".text") + 2
        vaddr, offset = int(row[addr_field], 16), int(row[addr_field + 1], 16)
        assert loaded.info.vaddr_for_offset(offset + 4) == vaddr + 4
        assert loaded.info.shared == (name == "pie")
    assert loaded.info.vaddr_for_offset(1 << 40) is None


def test_debuglink_is_found_beside_in_dot_debug_and_under_the_debug_root(
    tmp_path: Path,
) -> None:
    root = tmp_path / "debugroot"
    places = {
        "beside": tmp_path / "bin",
        "dotdebug": tmp_path / "bin" / ".debug",
        "root": root / str(tmp_path / "bin").lstrip("/"),
    }
    (tmp_path / "bin").mkdir()
    for place, directory in places.items():
        directory.mkdir(parents=True, exist_ok=True)
        binary = _compile(tmp_path / "bin", f"prog_{place}", "-Wl,--build-id=none")
        debug = tmp_path / f"prog_{place}.dbg"
        subprocess.run(["objcopy", "--only-keep-debug", str(binary), str(debug)], check=True)
        subprocess.run(["strip", "--strip-all", str(binary)], check=True)
        subprocess.run(["objcopy", f"--add-gnu-debuglink={debug}", str(binary)], check=True)
        shutil.move(debug, directory / debug.name)
        loaded = ElfSymbolizer([str(root)]).load_path(str(binary))
        assert loaded.debug_file == str(directory / debug.name), place
        assert loaded.info.build_id == ""
        assert loaded.symbols.lookup(_nm(directory / debug.name)["sym_beta"]) == "sym_beta"


def test_debuglink_to_a_file_of_another_build_is_ignored(tmp_path: Path) -> None:
    binary = _compile(tmp_path, "prog", "-Wl,--build-id=sha1")
    debug = tmp_path / "prog.dbg"
    subprocess.run(["objcopy", "--only-keep-debug", str(binary), str(debug)], check=True)
    subprocess.run(["strip", "--strip-all", str(binary)], check=True)
    subprocess.run(["objcopy", f"--add-gnu-debuglink={debug}", str(binary)], check=True)
    other = _compile(tmp_path, "other", "-Wl,--build-id=sha1", "-DOTHER=1")
    subprocess.run(["objcopy", "--only-keep-debug", str(other), str(debug)], check=True)
    assert _build_id(other) != _build_id(binary)
    loaded = ElfSymbolizer([str(tmp_path / "none")]).load_path(str(binary))
    assert loaded.debug_file == ""
    assert loaded.symbols.lookup(_nm(other)["sym_beta"]) is None


def test_build_id_debug_file_in_a_configured_root(tmp_path: Path) -> None:
    binary = _compile(tmp_path, "prog", "-Wl,--build-id=sha1")
    build_id = _build_id(binary)
    debug = tmp_path / "dbg" / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    debug.parent.mkdir(parents=True)
    subprocess.run(["objcopy", "--only-keep-debug", str(binary), str(debug)], check=True)
    subprocess.run(["strip", "--strip-all", str(binary)], check=True)
    loaded = ElfSymbolizer([str(tmp_path / "missing"), str(tmp_path / "dbg")]).load_path(
        str(binary)
    )
    assert loaded.debug_file == str(debug)
    assert loaded.symbols.lookup(_nm(debug)["sym_beta"]) == "sym_beta"


def test_libc_gets_its_full_symbols_from_libc6_dbg() -> None:
    symbolizer = ElfSymbolizer()
    loaded = symbolizer.load_path(LIBC)  # how long this takes: bench/symbolize.py
    assert loaded.debug_file.startswith("/usr/lib/debug/.build-id/")
    dynamic = _nm(Path(LIBC), "-D")
    assert loaded.symbols.lookup(dynamic["qsort"]) == "qsort"
    # nanosleep, __nanosleep and __GI___nanosleep share one address: the plain name wins.
    assert loaded.symbols.lookup(dynamic["nanosleep"]) == "nanosleep"
    assert len(loaded.symbols) > len(dynamic)
    assert symbolizer.files_parsed == 2  # libc and its debug file, each read once


def test_tables_are_cached_per_build_id(binaries: Path, tmp_path: Path) -> None:
    symbolizer = ElfSymbolizer()
    first = symbolizer.load_path(str(binaries / "pie"))
    copy = tmp_path / "copy"
    shutil.copy(binaries / "pie", copy)
    assert symbolizer.load_path(str(copy)) is first
    assert symbolizer.files_parsed == 1


def test_in_memory_image_loads(binaries: Path) -> None:
    image = (binaries / "pie").read_bytes()
    loaded = ElfSymbolizer().load_bytes(image, "image")
    assert loaded.symbols.lookup(_nm(binaries / "pie")["sym_alpha"]) == "sym_alpha"
    with pytest.raises(ELFError):
        ElfSymbolizer().load(lambda: io.BytesIO(b"not an elf at all, not at all"), "junk")


def test_cpp_names_are_demangled(tmp_path: Path) -> None:
    binary = _compile(tmp_path, "shapes", source=CPP_SOURCE, cc="g++")
    loaded = ElfSymbolizer().load_path(str(binary))
    mangled = _nm(binary)["_ZN6shapes4areaEii"]
    assert loaded.symbols.lookup(mangled) == "shapes::area(int, int)"
    assert demangle("_Znot_valid") == "_Znot_valid"
    assert demangle("plain_c") == "plain_c"
