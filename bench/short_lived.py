"""Short-lived processes: the samples of processes gone before their maps are read.

Runs `cpu -- sh churn.sh` where the script starts shells one after another, each living about
10 ms of CPU (a loop of shell arithmetic), with the default unwinder (`auto`: DWARF, frame
pointers where code has no CFI) and the frame-pointer one (`fp`), and prints per mode the
samples counted, the samples lost as `unwind: process_gone`, every other walk that stopped
early, and the frames the symbolizer could place in no process (`process_unknown`). Run it
beside two `yes >/dev/null` to see a reader that cannot keep up with the processes it samples.

    python bench/short_lived.py [--shells 150] [--runs 3] [--src DIR]

`--src` runs the CLI of another source tree (say, a checkout before a change) on the same
workload, for a before/after in one session.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

from _util import CLI, env_with_src

CHURN = """
i=0
while [ $i -lt "$1" ]; do
  /bin/sh -c 'j=0; while [ $j -lt 3000 ]; do j=$((j+1)); done'
  i=$((i+1))
done
"""


def profile(churn: Path, shells: int, unwind: str, src: str | None) -> dict[str, float]:
    """One run: samples, samples lost as process_gone, other early stops, unplaced frames."""
    out = churn.parent / f"cpu-{unwind}.json"
    env = env_with_src()
    if src:
        env["PYTHONPATH"] = src
    argv = [*CLI, "cpu", "--unwind", unwind, "-F", "499", "-o", str(out)]
    subprocess.run(
        [*argv, "--", "sh", str(churn), str(shells)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    doc = json.loads(out.read_text())
    lost = doc["lost_events"]
    gone = lost.get("unwind: process_gone", 0)
    symbols = next((n for n in doc.get("notes", []) if n.startswith("symbols:")), "")
    unknown = re.search(r"process_unknown (\d+)", symbols)
    return {
        "samples": doc["samples_total"],
        "gone": gone,
        "other_stops": sum(n for k, n in lost.items() if k.startswith("unwind: ")) - gone,
        "unplaced_frames": int(unknown.group(1)) if unknown else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shells", type=int, default=150)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--src", help="the src/ directory of another tree to run instead")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="otlp-ebpf-short-"))
    churn = work / "churn.sh"
    churn.write_text(CHURN)
    src = os.path.abspath(args.src) if args.src else None
    print(f"{args.shells} shells of ~10 ms each, cpu -F 499, median of {args.runs} runs")
    for unwind in ("auto", "fp"):
        runs = [profile(churn, args.shells, unwind, src) for _ in range(args.runs)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        share = med["gone"] / med["samples"] if med["samples"] else 0.0
        print(
            f"{unwind:5}  samples {med['samples']:6.0f}  process_gone {med['gone']:5.0f} "
            f"({share:5.1%})  other early stops {med['other_stops']:4.0f}  "
            f"frames of no known process {med['unplaced_frames']:5.0f}"
        )


if __name__ == "__main__":
    main()
