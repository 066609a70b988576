"""`analyze --alerts-out rules.yaml`: the alerting rules as a Prometheus rule file.

Every string is written as a JSON string (YAML reads JSON strings as they are), so names
and descriptions from the host cannot break the file's structure. No annotation uses a
template: what a rule says is fixed when the rule is written, from the recording.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TextIO

from otlp_ebpf.analysis.alerts import AlertRule, duration_text

GROUP_NAME = "otlp-ebpf-analyze"


def render_rules(rules: Sequence[AlertRule], stream: TextIO, *, source: str = "") -> None:
    stream.write(f"# Alerting rules derived by otlp-ebpf analyze from {json.dumps(source)}\n")
    stream.write("groups:\n")
    stream.write(f"  - name: {json.dumps(GROUP_NAME)}\n")
    if not rules:
        stream.write("    rules: []\n")
        return
    stream.write("    rules:\n")
    for rule in rules:
        stream.write(f"      - alert: {json.dumps(rule.name)}\n")
        stream.write(f"        expr: {json.dumps(rule.expr)}\n")
        stream.write(f"        for: {duration_text(rule.for_s)}\n")
        stream.write("        labels:\n")
        stream.write(f"          severity: {json.dumps(rule.severity)}\n")
        for key, value in sorted(rule.labels.items()):
            stream.write(f"          {key}: {json.dumps(value)}\n")
        stream.write("        annotations:\n")
        stream.write(f"          summary: {json.dumps(rule.summary)}\n")
        stream.write(f"          description: {json.dumps(rule.description)}\n")
