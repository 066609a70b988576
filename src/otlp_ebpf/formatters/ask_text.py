"""`ask` on a console: the answer, the table its figures come from, what a model called and
which of its numbers no tool result holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

MAX_SHOWN_ROWS = 10


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:,}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def result_table(result: Mapping[str, Any]) -> Table:
    """One tool result (its `to_dict()`) as a table, its title above it."""
    table = Table(title=Text(str(result["title"])), title_justify="left", box=None, pad_edge=False)
    columns: Sequence[str] = result["columns"]
    for column in columns:
        table.add_column(Text(column), overflow="fold")
    for row in result["rows"][:MAX_SHOWN_ROWS]:
        table.add_row(*(Text(_cell(row.get(c))) for c in columns))
    return table


def render_offline(answer: Mapping[str, Any], console: Console) -> None:
    """The offline answer (`OfflineAnswer.to_dict()`): sentence, then its table."""
    console.print(Text(str(answer["answer"])))
    result = answer.get("result")
    if result and result["rows"]:
        console.print()
        console.print(result_table(result))
        for note in result.get("notes", []):
            console.print(Text(f"note: {note}", style="dim"))


def render_llm(
    answer: str,
    calls: Sequence[Mapping[str, Any]],
    ungrounded: Sequence[Mapping[str, Any]],
    console: Console,
) -> None:
    """A model's answer, the tools it called, and the grounding verdict."""
    console.print(Text(answer))
    console.print()
    shown = [
        f"{c['name']}({_arguments(c['arguments'])})"
        + ("" if c["ok"] else f" [failed: {c.get('error', '')}]")
        for c in calls
    ]
    console.print(Text("tools called: " + ("; ".join(shown) if shown else "none"), style="dim"))
    if ungrounded:
        listed = ", ".join(str(u["text"]) for u in ungrounded)
        console.print(
            Text(
                f"UNGROUNDED numbers (in no tool result; do not trust them): {listed}",
                style="bold red",
            )
        )
    else:
        console.print(
            Text("grounded: every number in the answer is in a tool result", style="green")
        )


def _arguments(arguments: Any) -> str:
    if isinstance(arguments, Mapping):
        return ", ".join(f"{k}={v}" for k, v in arguments.items())
    return str(arguments)[:80]
