"""Load a page in headless Debian chromium and return its DOM after the scripts ran."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is needed for the HTML report tests (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return found


def dump_dom(page: Path, fragment: str = "", *flags: str) -> str:
    """The page's DOM as chromium serializes it once loaded (scripts run)."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                chromium(),
                *CHROMIUM_FLAGS,
                *flags,
                f"--user-data-dir={profile}",
                "--dump-dom",
                page.resolve().as_uri() + fragment,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    return proc.stdout


def table_rows(dom: str, table_id: str) -> list[list[str]]:
    """Body rows of <table id=table_id> as lists of cell texts (entities kept as written)."""
    m = re.search(rf'<table[^>]*id="{table_id}"[^>]*>(.*?)</table>', dom, re.S)
    assert m, f"no table {table_id}"
    body = m.group(1).split("<tbody>", 1)[1]
    return [
        re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


def chart_points(dom: str, chart_id: str) -> int:
    m = re.search(rf'<div class="chart" id="chart-{chart_id}">(.*?)</svg>', dom, re.S)
    assert m, f"no chart {chart_id}"
    return len(re.findall(r'<circle[^>]*class="pt"', m.group(1)))
