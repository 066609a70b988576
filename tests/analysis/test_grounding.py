"""The grounding check of `ask`: which numbers of an answer no tool result holds."""

from __future__ import annotations

import pytest

from otlp_ebpf.analysis.grounding import claims, ungrounded

RESULT = {
    "rows": [
        {"syscall": "openat", "calls": 1234, "errors": 30, "error_pct": 58.33, "p99_ns": 12345},
        {"bytes": 1_572_864},
    ],
    "notes": ["4195328 bytes outstanding"],
}


@pytest.mark.parametrize(
    "answer",
    [
        "openat was called 1,234 times.",
        "openat was called 1234 times.",
        "openat was called 1.2k times.",
        "58% of calls failed; 30 errors.",
        "58.33% of calls failed.",
        "p99 was 12.3 us (12,345 ns).",
        "It holds 1.5 MiB.",
        "4,195,328 bytes are outstanding.",
        "1. openat\n2. read: 30 errors",
        "openat2 and ext4 are names, not figures.",
        "between 3 and 6 s",  # the question's own numbers count as given
    ],
)
def test_grounded_answers(answer):
    assert ungrounded(answer, [RESULT, "what changed between 3 and 6 s?"]) == []


@pytest.mark.parametrize(
    ("answer", "flagged"),
    [
        ("openat was called 1,235 times.", ["1,235"]),
        ("openat failed 31 times (59%).", ["31", "59%"]),
        ("openat was called 1.3k times.", ["1.3k"]),
        ("p99 was 12.5 us.", ["12.5 us"]),
        ("It happened at 7 s.", ["7 s"]),
    ],
)
def test_invented_numbers_are_flagged(answer, flagged):
    assert [
        c.text for c in ungrounded(answer, [RESULT, "what changed between 3 and 6 s?"])
    ] == flagged


def test_claims_read_separators_multipliers_and_precision():
    found = {c.text: (c.value, c.tolerance) for c in claims("1,234 and 1.2k and 58% and 0.5")}
    assert found == {
        "1,234": (1234.0, 0.0),
        "1.2k": (1200.0, 50.0),
        "58%": (58.0, 0.5),
        "0.5": (0.5, 0.05),
    }
