#!/usr/bin/env python3
"""Generate src/otlp_ebpf/collectors/syscall_table.py from the UAPI unistd headers.

Syscall numbers are stable ABI, so the table is generated once and shipped; numbers added to
the kernel after the headers on the build machine are listed in NEWER below (they share one
numbering on every architecture since 5.1).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

X86 = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
GENERIC = Path("/usr/include/asm-generic/unistd.h")
OUT = Path(__file__).resolve().parent.parent / "src/otlp_ebpf/collectors/syscall_table.py"
NEWER = {
    451: "cachestat",
    452: "fchmodat2",
    453: "map_shadow_stack",
    454: "futex_wake",
    455: "futex_wait",
    456: "futex_requeue",
    457: "statmount",
    458: "listmount",
    459: "lsm_get_self_attr",
    460: "lsm_set_self_attr",
    461: "lsm_list_modules",
    462: "mseal",
    463: "setxattrat",
    464: "getxattrat",
    465: "listxattrat",
    466: "removexattrat",
    467: "open_tree_attr",
    468: "file_getattr",
    469: "file_setattr",
}
# What arm64's uapi asm/unistd.h defines before it includes asm-generic/unistd.h: the blocks
# of the generic table under these conditions exist on arm64, the others do not (no
# clock_gettime64 at 403, sync_file_range rather than arm_sync_file_range at 84).
ARM64_MACROS = {
    "__BITS_PER_LONG": 64,
    "__ARCH_WANT_RENAMEAT": 1,
    "__ARCH_WANT_NEW_STAT": 1,
    "__ARCH_WANT_SET_GET_RLIMIT": 1,
    "__ARCH_WANT_TIME32_SYSCALLS": 1,
    "__ARCH_WANT_SYS_CLONE3": 1,
    "__ARCH_WANT_MEMFD_SECRET": 1,
}
_DIRECTIVE = re.compile(r"\s*#\s*(\w+)\s*(.*?)\s*(?:/\*.*)?$")
_DEFINE = re.compile(r"(\w+)(?:\s+(.*))?$")
_EXPR_TOKEN = re.compile(r"\s*(defined|\w+|&&|\|\||==|!=|!|\(|\))")


def parse(path: Path, macros: dict[str, int] | None = None) -> dict[int, str]:
    """Syscall numbers -> names from a unistd header, honouring its #if/#ifdef blocks for an
    architecture that defines `macros` (None: every #define counts, for a flat header like
    x86_64's unistd_64.h). Numbers shared by 32- and 64-bit names (`__NR3264_fcntl`) take
    the name the kept branch gives them (`#define __NR_fcntl __NR3264_fcntl`)."""
    table: dict[int, str] = {}
    for name, number in _kept_numbers(path.read_text(), macros).items():
        if name.startswith("__NR_") and name not in NOT_SYSCALLS:
            table[number] = name.removeprefix("__NR_")
    for num, name in NEWER.items():
        table.setdefault(num, name)
    return dict(sorted(table.items()))


NOT_SYSCALLS = ("__NR_syscalls", "__NR_arch_specific_syscall")


def _kept_numbers(text: str, macros: dict[str, int] | None) -> dict[str, int]:
    """NAME -> number of every `#define NAME NUMBER` (or `NAME OTHER_NAME`) in the branches
    the preprocessor keeps for `macros`."""
    defined: dict[str, int] = dict(macros or {})
    numbers: dict[str, int] = {}
    stack: list[tuple[bool, bool]] = []  # per open #if: (this branch kept, a branch was kept)
    for line in text.splitlines():
        match = _DIRECTIVE.match(line)
        if not match:
            continue
        word, rest = match.groups()
        if word in ("if", "ifdef", "ifndef"):
            kept = macros is None or _condition(word, rest, defined)
            stack.append((kept, kept))
        elif word in ("elif", "else"):
            _, any_kept = stack.pop()
            kept = macros is None or (
                not any_kept and (word == "else" or _condition("if", rest, defined))
            )
            stack.append((kept, any_kept or kept))
        elif word == "endif":
            stack.pop()
        elif not all(kept for kept, _ in stack):
            continue
        elif word == "define" and (found := _DEFINE.match(rest)):
            name, value = found.group(1), (found.group(2) or "").strip()
            defined[name] = int(value) if value.isdigit() else 1
            if value.isdigit():
                numbers[name] = int(value)
            elif value in numbers:
                numbers[name] = numbers[value]
        elif word == "undef":
            defined.pop(rest.split()[0], None)
            numbers.pop(rest.split()[0], None)
    return numbers


def _condition(word: str, rest: str, defined: dict[str, int]) -> bool:
    if word == "ifdef":
        return rest.split()[0] in defined
    if word == "ifndef":
        return rest.split()[0] not in defined
    return _evaluate(rest, defined)


def _evaluate(expression: str, defined: dict[str, int]) -> bool:
    """A preprocessor condition of the forms the unistd headers use: defined(X), defined X,
    macros (0 when undefined), numbers, ==, !=, !, &&, || and parentheses."""
    tokens = _EXPR_TOKEN.findall(expression)
    python: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "defined":
            paren = tokens[index + 1] == "("
            name = tokens[index + 2] if paren else tokens[index + 1]
            python.append("1" if name in defined else "0")
            index += 4 if paren else 2
            continue
        if token in _OPERATORS:
            python.append(_OPERATORS[token])
        elif token.isdigit() or token in ("(", ")"):
            python.append(token)
        else:
            python.append(str(defined.get(token, 0)))
        index += 1
    # Only digits, parentheses and the operators above reach eval.
    return bool(eval(" ".join(python), {"__builtins__": {}}))


_OPERATORS = {"&&": "and", "||": "or", "!": "not", "==": "==", "!=": "!="}


def render(name: str, table: dict[int, str]) -> str:
    rows = "\n".join(f'    {n}: "{s}",' for n, s in table.items())  # as ruff formats it
    return f"{name}: dict[int, str] = {{\n{rows}\n}}\n"


def main() -> int:
    text = [
        '"""Syscall numbers to names (generated by tools/gen_syscall_table.py; stable ABI)."""\n'
    ]
    text.append(render("X86_64", parse(X86)))
    text.append(render("ARM64", parse(GENERIC, ARM64_MACROS)))
    OUT.write_text("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
