"""Host bytes become valid text that keeps every byte."""

from __future__ import annotations

import os

from otlp_ebpf import hosttext


def test_bytes_that_are_not_utf8_are_kept_as_escapes() -> None:
    assert hosttext.decode(b"evil\xff\xfe") == "evil\\xff\\xfe"
    assert hosttext.decode("naïve_λ".encode()) == "naïve_λ"


def test_strings_from_the_os_module_become_encodable() -> None:
    from_argv = os.fsdecode(b"./prog\xff")  # how sys.argv and os.readlink hold such bytes
    assert hosttext.from_fs(from_argv) == "./prog\\xff"
    assert hosttext.from_fs(from_argv).encode("utf-8")
    assert hosttext.from_fs("plain") == "plain"
