"""`otlp-ebpf net` against real TCP traffic between two network namespaces joined by veth.

Every test runs one driver command under `net -- CMD`: it starts a server in namespace B and a
client in namespace A (both descendants of the command, so both sides are traced) and writes
what each side sent and received. Addresses live only inside the namespaces made here.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from otlp_ebpf.cli.app import run
from otlp_ebpf.model import Connection, NetSnapshot, read_snapshot

pytestmark = pytest.mark.bpf

PEERS = r"""
import json, socket, struct, subprocess, sys, time

def serve(family, host, port, count, out):
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(64)
    print("ready", flush=True)
    seen = []
    for i in range(count):
        conn, peer = srv.accept()
        got = sent = 0
        try:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    break
                got += len(data)
                if data.endswith(b"!"):
                    sent += conn.send(b"k")  # the client waits for it, then closes abortively
            conn.sendall(b"r" * (1000 + i))
            sent += 1000 + i
        except ConnectionResetError:
            pass
        conn.close()
        seen.append({"rport": peer[1], "rx": got, "tx": sent})
    srv.close()
    json.dump(seen, open(out, "w"))

def connect(family, host, port, sizes, mode, out):
    done = []
    for size in sizes:
        c = socket.socket(family, socket.SOCK_STREAM)
        try:
            c.connect((host, port))
        except ConnectionRefusedError:
            done.append({"lport": c.getsockname()[1], "refused": True})
            c.close()
            continue
        lport = c.getsockname()[1]
        if mode == "abort":
            c.sendall(b"a" * (size - 1) + b"!")
            assert c.recv(1) == b"k"
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            done.append({"lport": lport, "tx": size, "rx": 1})
            continue
        c.sendall(b"x" * size)
        c.shutdown(socket.SHUT_WR)
        got = 0
        while True:
            data = c.recv(1 << 16)
            if not data:
                break
            got += len(data)
        c.close()
        done.append({"lport": lport, "tx": size, "rx": got})
    json.dump(done, open(out, "w"))

def drive(ns_server, ns_client, family, host, port, sizes, mode, outdir, count):
    me = [sys.executable, __file__]
    fam = str(family)
    server = None
    if count:  # no server: every connection is refused
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns_server, *me, "serve", fam, host, str(port), str(count),
             outdir + "/server.json"], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
    subprocess.run(
        ["ip", "netns", "exec", ns_client, *me, "connect", fam, host, str(port), mode,
         outdir + "/client.json", *map(str, sizes)], check=True)
    if server is not None:
        server.wait(timeout=60)

if __name__ == "__main__":
    role = sys.argv[1]
    if role == "serve":
        serve(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    elif role == "connect":
        connect(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), [int(s) for s in sys.argv[7:]],
                sys.argv[5], sys.argv[6])
    else:
        a = sys.argv
        drive(a[2], a[3], int(a[4]), a[5], int(a[6]), [int(s) for s in a[10:]], a[7], a[8],
              int(a[9]))
"""

V4 = ("10.200.1.1", "10.200.1.2")
V6 = ("fd00:200::1", "fd00:200::2")


@dataclass(frozen=True)
class Namespaces:
    client: str
    server: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def netns() -> Iterator[Namespaces]:
    tag = secrets.token_hex(3)
    ns = Namespaces(client=f"oe-{tag}-a", server=f"oe-{tag}-b")
    veth_a, veth_b = f"oe{tag}a", f"oe{tag}b"
    try:
        _ip("netns", "add", ns.client)
        _ip("netns", "add", ns.server)
        _ip(
            "link",
            "add",
            veth_a,
            "netns",
            ns.client,
            "type",
            "veth",
            "peer",
            "name",
            veth_b,
            "netns",
            ns.server,
        )
        for name, dev, v4, v6 in (
            (ns.client, veth_a, V4[0], V6[0]),
            (ns.server, veth_b, V4[1], V6[1]),
        ):
            _ip("-n", name, "addr", "add", f"{v4}/24", "dev", dev)
            _ip("-n", name, "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "link", "set", dev, "up")
        yield ns
    finally:
        for name in (ns.client, ns.server):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@dataclass
class Run:
    snapshot: NetSnapshot
    client: list[dict[str, int]]
    server: list[dict[str, int]]
    exit_code: int


def _trace(
    tmp_path: Path,
    ns: Namespaces,
    *,
    family: int,
    port: int,
    sizes: list[int],
    mode: str = "normal",
    accepts: int | None = None,
    extra: tuple[str, ...] = (),
) -> Run:
    script = tmp_path / "peers.py"
    script.write_text(PEERS)
    host = V4[1] if family == 2 else V6[1]
    count = len(sizes) if accepts is None else accepts
    out = tmp_path / "net.json"
    driver = [
        sys.executable,
        str(script),
        "drive",
        ns.server,
        ns.client,
        str(family),
        host,
        str(port),
        mode,
        str(tmp_path),
        str(count),
        *map(str, sizes),
    ]
    code = run(["net", "-d", "60", "-o", str(out), *extra, "--", *driver])
    snapshot = read_snapshot(str(out))
    assert isinstance(snapshot, NetSnapshot)

    def load(name: str) -> list[dict[str, int]]:
        path = tmp_path / name
        return json.loads(path.read_text()) if path.exists() else []

    return Run(snapshot, load("client.json"), load("server.json"), code)


def _by_ports(conns: tuple[Connection, ...], lport: int = 0, rport: int = 0) -> Connection:
    found = [
        c for c in conns if (not lport or c.lport == lport) and (not rport or c.rport == rport)
    ]
    assert len(found) == 1, f"expected one connection lport={lport} rport={rport}: {found}"
    return found[0]


def _retrans_segs(ns: str) -> int:
    text = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    header, values = [line.split() for line in text.splitlines() if line.startswith("Tcp:")][:2]
    return int(values[header.index("RetransSegs")])


def _check_exact_bytes(
    result: Run, port: int, client_addr: str, server_addr: str, *, all_closed: bool = True
) -> None:
    conns = result.snapshot.connections
    assert result.client and len(result.client) == len(result.server)
    for sent in result.client:
        client_side = _by_ports(conns, lport=sent["lport"], rport=port)
        server_side = _by_ports(conns, lport=port, rport=sent["lport"])
        reply = next(s for s in result.server if s["rport"] == sent["lport"])
        assert (client_side.tx_bytes, client_side.rx_bytes) == (sent["tx"], sent["rx"])
        assert (server_side.tx_bytes, server_side.rx_bytes) == (reply["tx"], reply["rx"])
        assert reply["rx"] == sent["tx"] and sent["rx"] == reply["tx"]
        assert (client_side.laddr, client_side.raddr) == (client_addr, server_addr)
        assert (server_side.laddr, server_side.raddr) == (server_addr, client_addr)
        if all_closed:
            assert client_side.state == server_side.state == "CLOSE"
            assert not client_side.open and not server_side.open
        assert client_side.comm.startswith("python") and server_side.comm.startswith("python")
        assert client_side.pid != server_side.pid  # each side owned by its own process
        assert client_side.connect_latency_us > 0 and server_side.connect_latency_us == 0
        assert client_side.srtt_us > 0


def test_exact_bytes_per_connection_on_both_sides_ipv4(tmp_path: Path, netns: Namespaces) -> None:
    sizes = [1, 4_096, 100_003, 1_048_576 + 7]
    result = _trace(tmp_path, netns, family=2, port=5101, sizes=sizes)

    assert result.exit_code == 0
    _check_exact_bytes(result, 5101, *V4)
    assert len(result.snapshot.connections) == 2 * len(sizes)
    assert all(c.family == 2 for c in result.snapshot.connections)
    assert result.snapshot.lost_total == 0


def test_exact_bytes_ipv6_and_family_filter(tmp_path: Path, netns: Namespaces) -> None:
    sizes = [10, 65_536, 333_333]
    result = _trace(tmp_path, netns, family=10, port=5102, sizes=sizes)
    _check_exact_bytes(result, 5102, *V6)
    assert all(c.family == 10 for c in result.snapshot.connections)

    (tmp_path / "v4").mkdir()
    v4_only = _trace(tmp_path / "v4", netns, family=10, port=5103, sizes=[5], extra=("--ipv4",))
    assert v4_only.client and v4_only.snapshot.connections == ()


def test_retransmits_agree_with_kernel_counter(tmp_path: Path, netns: Namespaces) -> None:
    subprocess.run(
        ["ip", "netns", "exec", netns.server, "nft", "-f", "-"],
        check=True,
        input=(
            "table inet oe_loss {\n chain input {\n  type filter hook input priority 0;\n"
            "  tcp dport 5104 numgen random mod 10 0 counter drop\n }\n}\n"
        ),
        text=True,
    )
    try:
        before = _retrans_segs(netns.client)
        result = _trace(tmp_path, netns, family=2, port=5104, sizes=[1_500_000] * 3)
        after = _retrans_segs(netns.client)
        rules = subprocess.run(
            ["ip", "netns", "exec", netns.server, "nft", "list", "ruleset"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        subprocess.run(
            ["ip", "netns", "exec", netns.server, "nft", "delete", "table", "inet", "oe_loss"],
            capture_output=True,
        )
    counted = re.search(r"counter packets (\d+)", rules)
    assert counted is not None
    dropped = int(counted.group(1))

    # Bytes stay exact under loss; a final ACK lost may leave the server in LAST_ACK at the end.
    _check_exact_bytes(result, 5104, *V4, all_closed=False)
    kernel = after - before
    ours = sum(c.retransmits for c in result.snapshot.connections if c.laddr == V4[0])
    assert kernel > 10, f"the loss rule did not provoke retransmits ({kernel})"
    assert abs(ours - kernel) <= 0.1 * kernel, f"retransmits {ours} vs RetransSegs {kernel}"
    assert result.snapshot.retransmits >= ours
    # The rule keeps dropping the last segments of closing connections after the run has
    # ended (the command exited), so the rule's own counter may end a little higher.
    assert result.snapshot.drops.get("NETFILTER_DROP", 0) >= 0.8 * dropped > 0


def test_connect_to_closed_port_is_reset(tmp_path: Path, netns: Namespaces) -> None:
    result = _trace(tmp_path, netns, family=2, port=5105, sizes=[1, 1], accepts=0)

    assert [c["refused"] for c in result.client] == [True, True]
    conns = result.snapshot.connections
    assert len(conns) == 2
    for attempt in result.client:
        conn = _by_ports(conns, lport=attempt["lport"], rport=5105)
        assert (conn.resets_received, conn.resets_sent) == (1, 0)
        assert (conn.tx_bytes, conn.rx_bytes) == (0, 0)
        assert conn.connect_latency_us == 0 and conn.state == "CLOSE"
    assert result.snapshot.resets == {"sent": 0, "received": 2}
    assert result.snapshot.drops.get("NO_SOCKET", 0) >= 2  # the server side had no socket


def test_abortive_close_sends_and_receives_a_reset(tmp_path: Path, netns: Namespaces) -> None:
    result = _trace(tmp_path, netns, family=2, port=5106, sizes=[5_000], mode="abort")

    (sent,) = result.client
    (seen,) = result.server
    conns = result.snapshot.connections
    client_side = _by_ports(conns, lport=sent["lport"], rport=5106)
    server_side = _by_ports(conns, lport=5106, rport=sent["lport"])
    assert (client_side.resets_sent, client_side.resets_received) == (1, 0)
    assert (server_side.resets_sent, server_side.resets_received) == (0, 1)
    assert (client_side.tx_bytes, client_side.rx_bytes) == (5_000, 1)
    assert (server_side.tx_bytes, server_side.rx_bytes) == (seen["tx"], seen["rx"]) == (1, 5_000)
    assert result.snapshot.resets == {"sent": 1, "received": 1}


OPEN_PAIR = r"""
import socket, sys, time
port = int(sys.argv[1])
srv = socket.socket()
srv.bind(("127.0.0.1", port))
srv.listen()
print("listening", flush=True)
time.sleep(2.0)  # the collector attaches meanwhile (slowly on a busy machine)
client = socket.create_connection(("127.0.0.1", port))
peer, _ = srv.accept()
for size in (10_000, 5_000):
    client.sendall(b"c" * size)
    got = 0
    while got < size:
        got += len(peer.recv(size - got))
    peer.sendall(b"s" * size)
    got = 0
    while got < size:
        got += len(client.recv(size - got))
    time.sleep(0.6)
time.sleep(30)
"""


def test_open_connections_reported_with_bytes_so_far_and_interval_series(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "pair.py"
    script.write_text(OPEN_PAIR)
    port = 5107 + os.getpid() % 1000
    proc = subprocess.Popen([sys.executable, str(script), str(port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"listening"
        out = tmp_path / "net.json"
        code = run(["net", "-p", str(proc.pid), "-d", "4", "--interval", "0.5", "-o", str(out)])
    finally:
        proc.kill()
        proc.wait()
    assert code == 0
    snapshot = read_snapshot(str(out))
    assert isinstance(snapshot, NetSnapshot)
    conns = snapshot.connections
    assert len(conns) == 2
    assert {(c.lport == port, c.rport == port) for c in conns} == {(True, False), (False, True)}
    for conn in conns:
        assert conn.open and conn.state == "ESTABLISHED"
        assert (conn.tx_bytes, conn.rx_bytes) == (15_000, 15_000)
        assert conn.pid == proc.pid  # the accepted side too: claimed by its first recv
    assert sum(sum(p.values.values()) for p in snapshot.series) == 60_000
    assert snapshot.interval_s == 0.5 and len(snapshot.series) >= 4
    err = capsys.readouterr().err
    assert "bytes in the interval ending at" in err and "10,000" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["net", "--laddr", "not-an-ip", "-d", "1"]) == 2
    assert run(["net", "--ipv4", "--ipv6", "-d", "1"]) == 2
    assert run(["net", "--port", "70000", "-d", "1"]) == 2
    assert run(["net", "-o", "/tmp/x.folded", "-d", "1"]) == 2  # net has no stacks
    err = capsys.readouterr().err
    assert "not an IPv4 or IPv6 address" in err and "not both" in err


def test_ctypes_mirror_matches_the_object_btf() -> None:
    import ctypes

    from otlp_ebpf.collectors.net import ConnRecord
    from otlp_ebpf.runtime import btf
    from otlp_ebpf.runtime.loader import BpfObject

    with BpfObject.open("net") as obj:
        size, members = btf.struct_layout(obj, "conn")
    assert size == ctypes.sizeof(ConnRecord)
    names = [f[0] for f in ConnRecord._fields_]
    assert members == {name: getattr(ConnRecord, name).offset for name in names}
