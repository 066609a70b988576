"""The snapshot itself as JSON: the input of `report`, `diff` and `analyze` (docs/snapshot.md)."""

from __future__ import annotations

import io
from typing import BinaryIO

from otlp_ebpf.model import Snapshot, write_snapshot


def render(snapshot: Snapshot, stream: BinaryIO) -> None:
    """Write the snapshot as UTF-8 JSON; fits every kind."""
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n", write_through=True)
    try:
        write_snapshot(snapshot, text)
        text.flush()
    finally:
        # Hand the stream back open: the caller owns it.
        text.detach()
