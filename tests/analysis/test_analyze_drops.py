"""`analyze` on a real recording of a TCP client whose server drops half of its packets (an
nftables rule in the server's network namespace) for two seconds: lower throughput on that
connection is the top finding, with retransmits or drops as its cause, in that window; the
same client without the rule gives no finding. Addresses live only inside the two network
namespaces the test creates."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otlp_ebpf.analysis.analyze import analyze
from otlp_ebpf.cli.app import run
from otlp_ebpf.model import RecordSnapshot, read_snapshot
from tests.conftest import build_c

pytestmark = pytest.mark.bpf

CLIENT_NS, SERVER_NS = "oe-analyze-c", "oe-analyze-s"
SERVER_ADDR, PORT = "10.231.7.2", 9000
RUN_S, DROP_FROM_S, DROP_UNTIL_S = 7.0, 3.0, 5.0
INTERVAL_S = 0.25

# 16 KiB every 5 ms (3.2 MB/s, far below what a veth pair carries) for RUN_S seconds; the
# file named by argv[1] is created once connected, so the test can time the drops from it.
CLIENT = r"""
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static double now(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
int main(int argc, char **argv) {
    static char chunk[16384];
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &a.sin_addr);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) return 2;
    close(open(argv[1], O_CREAT | O_WRONLY, 0600));
    double start = now(), run = atof(argv[4]);
    while (now() - start < run) {
        if (write(s, chunk, sizeof chunk) < 0) return 3;
        usleep(5000);
    }
    return 0;
}
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture(scope="module")
def namespaces() -> Iterator[None]:
    if shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.skip("nftables and iproute2 are needed (make setup installs them)")
    for ns in (CLIENT_NS, SERVER_NS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        sh("ip", "netns", "add", ns)
    try:
        sh(
            "ip",
            "-n",
            CLIENT_NS,
            "link",
            "add",
            "oe-an-c",
            "type",
            "veth",
            "peer",
            "name",
            "oe-an-s",
            "netns",
            SERVER_NS,
        )
        for ns, dev, addr in (
            (CLIENT_NS, "oe-an-c", "10.231.7.1/24"),
            (SERVER_NS, "oe-an-s", f"{SERVER_ADDR}/24"),
        ):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        for ns in (CLIENT_NS, SERVER_NS):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def client(tmp_path_factory, cc) -> Path:
    return build_c(cc, CLIENT, tmp_path_factory.mktemp("drops") / "client", "-O1")


def serve() -> subprocess.Popen[bytes]:
    """A sink in the server namespace: accepts one connection, reads until it closes."""
    code = (
        "import socket\n"
        f"s = socket.create_server(('{SERVER_ADDR}', {PORT}))\n"
        "c, _ = s.accept()\n"
        "while c.recv(1 << 16): pass\n"
    )
    server = subprocess.Popen(["ip", "netns", "exec", SERVER_NS, "python3", "-c", code])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        probe = subprocess.run(
            ["ip", "netns", "exec", SERVER_NS, "ss", "-ltn"], capture_output=True, text=True
        )
        if f"{SERVER_ADDR}:{PORT}" in probe.stdout:
            return server
        time.sleep(0.05)
    server.kill()
    raise AssertionError("the sink did not start listening")


def drop_half(connected: Path) -> None:
    """From DROP_FROM_S to DROP_UNTIL_S after the client connected, the server's namespace
    drops every other packet to the port."""
    deadline = time.monotonic() + 20
    while not connected.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    began = time.monotonic()
    time.sleep(DROP_FROM_S)
    sh(
        "ip",
        "netns",
        "exec",
        SERVER_NS,
        "nft",
        "add table inet oeanalyze; "
        "add chain inet oeanalyze input { type filter hook input priority 0; }; "
        f"add rule inet oeanalyze input tcp dport {PORT} numgen random mod 2 0 drop",
    )
    time.sleep(max(0.0, DROP_UNTIL_S - (time.monotonic() - began)))
    sh("ip", "netns", "exec", SERVER_NS, "nft", "delete table inet oeanalyze")


def record(tmp_path: Path, client: Path, with_drops: bool) -> RecordSnapshot:
    connected = tmp_path / "connected"
    path = tmp_path / "rec.json"
    server = serve()
    dropper = threading.Thread(target=drop_half, args=(connected,)) if with_drops else None
    try:
        if dropper:
            dropper.start()
        command = [
            "ip",
            "netns",
            "exec",
            CLIENT_NS,
            str(client),
            str(connected),
            SERVER_ADDR,
            str(PORT),
            str(RUN_S),
        ]
        code = run(
            [
                "-q",
                "record",
                "--signals",
                "syscalls,net",
                "--interval",
                str(INTERVAL_S),
                "-o",
                str(path),
                "--",
                *command,
            ]
        )
        assert code == 0
    finally:
        if dropper:
            dropper.join()
        server.wait(timeout=10)
    snapshot = read_snapshot(str(path))
    assert isinstance(snapshot, RecordSnapshot)
    return snapshot


def test_dropped_packets_are_the_cause_of_lower_throughput_in_their_window(
    tmp_path, namespaces, client
):
    analysis = analyze(record(tmp_path, client, with_drops=True))
    summaries = [f.summary for f in analysis.findings]
    assert analysis.findings, [a.to_dict() for a in analysis.anomalies]
    top = analysis.findings[0]
    assert top.kind == "throughput_down", summaries
    assert f"> {SERVER_ADDR}:{PORT}" in top.effects[0].series.labels["connection"]
    assert top.cause is not None and top.cause.kind in ("retransmits", "drops"), summaries
    assert top.cause.total > 0
    assert DROP_FROM_S - INTERVAL_S - 0.3 <= top.start_s <= DROP_FROM_S + 0.5, summaries
    # It lasts at least as long as the drops. TCP's retransmission timer, doubled at every
    # loss, can keep the connection silent for seconds after the rule goes: no upper bound.
    assert top.end_s >= DROP_UNTIL_S - 0.5, summaries


def test_the_same_client_without_drops_gives_no_finding(tmp_path, namespaces, client):
    analysis = analyze(record(tmp_path, client, with_drops=False))
    assert analysis.findings == [], [f.summary for f in analysis.findings]
