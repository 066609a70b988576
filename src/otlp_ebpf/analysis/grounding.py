"""Is every number of an answer in the data? The check `ask` runs on what a model wrote.

A number in the answer is grounded when some number in a tool result (or in the question)
equals it within the precision it was shown with: `1,234`, `1234` and `1234.0` are 1234;
`1.2k` is 1200 +- 50, so 1234 grounds it; `58%` is 58 +- 0.5, so a share of 58.33 grounds it.
A number followed by a unit may be the result's value in a larger unit (`12.3 us` for 12345
ns, `1.5 MiB` for 1572864 bytes). Numbering of a list (`1.` at the start of a line) is not a
claim about the data and is not checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# A number not glued to a word before it (`openat2`, `ext4`, `0x1f` are names), with
# thousands separators, decimals, an optional k/M/G multiplier and an optional unit or %.
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>-)?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?"
    r"(?:\s?(?P<mult>[kKMG])(?![a-zA-Z]))?"
    r"(?P<unit>\s?(?:%|ns|us|µs|ms|s|B|kB|KB|KiB|MB|MiB|GB|GiB|bytes)(?![a-zA-Z]))?"
    r"(?![\w])"
)
_LIST_MARKER = re.compile(r"^\s*(\d+)[.)]\s", re.MULTILINE)
_MULTIPLIERS = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
_TIME_SCALES = (1e3, 1e6, 1e9, 1e-3, 1e-6)
_BYTE_SCALES = (1e3, 1e6, 1e9, 1024.0, 1024.0**2, 1024.0**3)


@dataclass(frozen=True)
class Claim:
    """One number as written in the answer."""

    text: str
    value: float
    tolerance: float
    unit: str

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "value": self.value}


def claims(text: str) -> list[Claim]:
    """Every number the text states, list markers left out."""
    markers = {m.start(1) for m in _LIST_MARKER.finditer(text)}
    out = []
    for match in _NUMBER.finditer(text):
        if match.start("int") in markers:
            continue
        digits = match.group("int").replace(",", "")
        frac = match.group("frac") or ""
        value = float(digits + frac)
        step = 10.0 ** -(len(frac) - 1) if frac else 1.0
        multiplier = _MULTIPLIERS.get(match.group("mult") or "", 1.0)
        tolerance = step * multiplier / 2 if (frac or multiplier != 1.0) else 0.0
        # An integer shown as a rounded percentage still has half a unit of slack.
        unit = (match.group("unit") or "").strip()
        if unit == "%" and not frac:
            tolerance = 0.5
        out.append(Claim(match.group(0).strip(), value * multiplier, tolerance, unit))
    return out


def numbers_in(value: Any) -> set[float]:
    """Every number in a JSON-like value, including the ones written inside its strings."""
    found: set[float] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int | float):
            found.add(abs(float(item)))
        elif isinstance(item, str):
            found.update(abs(c.value) for c in claims(item))
        elif isinstance(item, dict):
            stack.extend(item.values())
            stack.extend(item.keys())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return found


def _scales(unit: str) -> tuple[float, ...]:
    if unit in ("ns", "us", "µs", "ms", "s"):
        return (1.0, *_TIME_SCALES)
    if unit in ("B", "kB", "KB", "KiB", "MB", "MiB", "GB", "GiB", "bytes"):
        return (1.0, *_BYTE_SCALES)
    return (1.0,)


def grounded(claim: Claim, known: Iterable[float]) -> bool:
    target = abs(claim.value)
    for value in known:
        for scale in _scales(claim.unit):
            slack = claim.tolerance * scale + 1e-9 * max(1.0, value)
            if abs(target * scale - value) <= slack:
                return True
    return False


def ungrounded(answer: str, evidence: Iterable[Any]) -> list[Claim]:
    """The numbers of `answer` that no tool result (nor the question) holds."""
    known: set[float] = set()
    for item in evidence:
        known |= numbers_in(item)
    return [c for c in claims(answer) if not grounded(c, known)]
