"""How many NFLOG messages one `NflogSocket` reads per second before it loses some.

Method (root): a network namespace of its own with one rule, `udp dport 5555 log group 77`, on
output; a sender thread in the namespace sends UDP datagrams to the namespace's own address at
a paced rate (in bursts every millisecond) for `--seconds`; a reader thread in the same
namespace waits on the socket (select) and reads everything, as the flow daemon does. For each
rate: messages sent, read and counted lost (sequence gaps and overruns), and the read rate.
Then the sender runs unpaced (as fast as Python sends, the kernel logging each datagram), in
the reader's process, and then as one and two other processes (the reader then has its
interpreter to itself, as the flow daemon's thread per node would not).
The machine is shared (2 CPUs): sender and reader compete for them, as a flood and the flow
daemon would on a lab node. Results also go to `benchmarks/results/nflog.json`.

`python3 benchmarks/bench_nflog.py [--seconds 2] [--rates 5000,10000,20000,40000,80000]`
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from crossmesh import nft
from crossmesh.drivers import nflog
from crossmesh.drivers.lab import netns

GROUP = 77


def _setup(name: str) -> None:
    netns.create(name)
    for argv in (["ip", "link", "set", "lo", "up"],):
        netns.run(name, argv)
    f = nft.Field
    rule = nft.Rule((nft.Match(f.UDP_DPORT, 5555), nft.Log(GROUP, "cm:bench")))
    chain = nft.Chain("out", (rule,), nft.Base(nft.ChainType.FILTER, nft.Hook.OUTPUT, 0))
    done = netns.run(name, ["nft", "-f", "-"], input=nft.render(nft.Table("t", (chain,))))
    if done.returncode != 0:
        raise SystemExit(done.stderr)


_FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n, end = 0, time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for _ in range(256):
        s.sendto(b"x", ("127.0.0.1", 5555))
    n += 256
print(n)
"""


def _round(name: str, rate: int | None, seconds: float, processes: int = 0) -> dict[str, float | int | None]:
    reader = netns.run_in(name, lambda: nflog.NflogSocket(GROUP))
    sender = netns.run_in(name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    done = threading.Event()
    sent = 0

    def send() -> None:
        nonlocal sent
        if processes:  # a flood from other processes: the reader has its interpreter to itself
            argv = netns.exec_argv(name, [sys.executable, "-c", _FLOOD, str(seconds)])
            floods = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
            sent = sum(int(f.communicate()[0]) for f in floods)
            done.set()
            return
        start = time.monotonic()
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate) if rate else sent + 256
            while sent < due:
                sender.sendto(b"x", ("127.0.0.1", 5555))
                sent += 1
            if rate:
                time.sleep(0.001)
        done.set()

    got = lost = 0
    thread = threading.Thread(target=send)
    start = time.monotonic()
    thread.start()
    quiet_since = None
    while True:
        select.select([reader], [], [], 0.1)
        packets, gone = reader.read()
        got += len(packets)
        lost += gone
        if done.is_set():
            if packets or gone:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 0.3:
                break
    elapsed = time.monotonic() - start
    thread.join()
    # One more: its sequence number measures a loss at the very end, which no later message showed.
    sender.sendto(b"x", ("127.0.0.1", 5555))
    sent += 1
    time.sleep(0.3)
    packets, gone = reader.read()
    got += len(packets)
    lost += gone
    sender.close()
    reader.close()
    return {
        "rate": rate,
        "sender_processes": processes,
        "sent": sent,
        "read": got,
        "lost": lost,
        "read_per_s": round(got / seconds),
        "elapsed_s": round(elapsed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rates", default="5000,10000,20000,40000,80000")
    args = parser.parse_args()
    name = f"cm-nflogbench-{os.getpid()}"
    _setup(name)
    try:
        rows = [_round(name, int(r), args.seconds) for r in args.rates.split(",")]
        rows.append(_round(name, None, args.seconds))
        rows.append(_round(name, None, args.seconds, processes=1))
        rows.append(_round(name, None, args.seconds, processes=2))
    finally:
        netns.remove(name)
    for row in rows:
        print(row)
    out = Path(__file__).parent / "results" / "nflog.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
