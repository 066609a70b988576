#!/usr/bin/env python3
"""How many TCP connections per second `net` keeps up with, losing no record.

A C workload on loopback opens, uses (100 bytes each way) and closes N connections as fast
as it can; it runs untraced, then under the collector. The figures are the workload's own
rate in both runs, their ratio, and whether every connection (two sockets each) came back
with exact bytes and nothing lost. Usage: bench/net.py [CONNECTIONS] (root needed).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOAD = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int n = atoi(argv[1]), one = 1;
    char buf[100] = {0};
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    int srv = socket(AF_INET, SOCK_STREAM, 0);
    struct timespec t0, t1;

    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(srv, (struct sockaddr *)&addr, sizeof(addr)) || listen(srv, 1024))
        return 1;
    getsockname(srv, (struct sockaddr *)&addr, &len);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&addr, sizeof(addr)))
            return 2;
        int s = accept(srv, NULL, NULL);
        if (send(c, buf, sizeof(buf), 0) != sizeof(buf) ||
            recv(s, buf, sizeof(buf), MSG_WAITALL) != sizeof(buf))
            return 3;
        if (send(s, buf, sizeof(buf), 0) != sizeof(buf) ||
            recv(c, buf, sizeof(buf), MSG_WAITALL) != sizeof(buf))
            return 4;
        close(s); /* the server closes first: TIME_WAIT stays on its side, client ports recycle */
        close(c);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.0f\n", n / ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9));
    return 0;
}
"""


def build(tmp: Path) -> Path:
    src, exe = tmp / "conn_loop.c", tmp / "conn_loop"
    src.write_text(WORKLOAD)
    cc = shutil.which("gcc") or shutil.which("cc") or "cc"
    subprocess.run([cc, "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def untraced(exe: Path, n: int) -> float:
    return float(
        subprocess.run([str(exe), str(n)], check=True, capture_output=True, text=True).stdout
    )


def traced(exe: Path, n: int, out: Path) -> tuple[float, int, int, bool]:
    """(rate, records, lost, bytes exact) with the collector following the workload."""
    from otlp_ebpf.collectors.net import NetConfig, collect
    from otlp_ebpf.targets import TargetSpec

    rate_file = out / "rate"
    command = ("sh", "-c", f"{exe} {n} > {rate_file}")
    snapshot = collect(NetConfig(targets=TargetSpec(command=command)))
    conns = snapshot.connections
    exact = all(c.tx_bytes == c.rx_bytes == 100 for c in conns)
    return float(rate_file.read_text()), len(conns), snapshot.lost_total, exact


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        exe = build(tmp)
        untraced(exe, 1_000)  # warm-up
        rows = []
        for _ in range(3):
            base = untraced(exe, n)
            t0 = time.monotonic()
            rate, records, lost, exact = traced(exe, n, tmp)
            rows.append((base, rate, records, lost, exact, time.monotonic() - t0))
        print(f"connections per run: {n:,} (2 sockets each)")
        for base, rate, records, lost, exact, wall in rows:
            print(
                f"untraced {base:,.0f} conn/s | traced {rate:,.0f} conn/s | ratio {rate / base:.2f}"
                f" | records {records:,}/{2 * n:,} | lost {lost} | bytes exact {exact}"
                f" | run {wall:.1f} s"
            )
        ok = all(records == 2 * n and lost == 0 and exact for _, _, records, lost, exact, _ in rows)
        print("zero lost records:", "yes" if ok else "NO")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
