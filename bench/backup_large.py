#!/usr/bin/env python3
"""Issue 12: backup against a POP3 server holding a million small messages.

A throwaway Dovecot (samples/dovecot-sandbox.sh) on 127.0.0.1 serves the messages of
bench/index.py's generated mbox (about 2 kB each) from a Maildir. Measured in one run, over
STLS on loopback:
  - the bare exchange: connect, STLS, USER/PASS, LIST and UIDL pipelined, QUIT, by a client
    that only looks for the end of each answer (the server's own cost of a nothing-new run);
  - popvault: a full backup into a fresh archive, then nothing-new runs;
  - mpop: a full download (to get its UIDL state), then nothing-new runs (only_new).
Wall time (median) and peak RSS.

usage: bench/backup_large.py [COUNT] [--runs N] [--port-base P] [--baseline BINARY]
       (defaults 1000000, 3, 12400; --baseline: another popvault measured the same way, as
       "popvault (baseline)", e.g. a build of an earlier commit)
"""
import argparse
import os
import shutil
import socket
import ssl
import subprocess
import time

import backup as B
import common
from common import OUT, median
from index import gen_mbox


class MboxServer(B.Server):
    """A Dovecot sandbox serving the messages of the generated mbox of `count` messages."""

    def __init__(self, count, port_base, work):
        self.count = count
        self.pop3, self.pop3s = port_base + 10, port_base + 95
        self.imap, self.imaps = port_base + 43, port_base + 93
        self.dir = os.path.join(work, f"server-{count}")
        mbox = gen_mbox(os.path.join(OUT, f"index-{count}.mbox"), count)
        cur = os.path.join(self.dir, "home", "Maildir", "cur")
        os.makedirs(cur)
        self.bytes = self.lf_bytes = 0
        B.log(f"writing {count} messages into {cur}")
        n, message = 0, []

        def flush():
            data = b"".join(message[:-1])  # the blank line before the next postmark is not the message's
            with open(os.path.join(cur, f"{n:08d}.bench:2,S"), "wb") as f:
                f.write(data)
            self.lf_bytes += len(data)
            self.bytes += len(data) + data.count(b"\n")  # served with CRLF

        with open(mbox, "rb") as f:
            for line in f:
                if line.startswith(b"From ") and (not message or message[-1] == b"\n"):
                    if message:
                        flush()
                        n += 1
                    message = []
                    continue
                message.append(line)
        if message:
            flush()
        # Dovecot's default 256 MB per process runs out when mpop pipelines its way through a
        # million messages (popvault's backup stays within it): a provider's server of this
        # size would allow more.
        self.env = {"POP3_PORT": str(self.pop3), "POP3S_PORT": str(self.pop3s),
                    "IMAP_PORT": str(self.imap), "IMAPS_PORT": str(self.imaps),
                    "DOVECOT_EXTRA": "default_vsz_limit = 2G"}
        B.log(f"starting Dovecot with {count} messages on port {self.pop3}")
        subprocess.run([B.SANDBOX, "start", self.dir], env=dict(os.environ, **self.env), check=True)
        self.ca = os.path.join(self.dir, "ca.pem")


def bare_exchange(server):
    """LIST and UIDL over STLS, the answers read but not parsed: (seconds, lines)."""
    start = time.perf_counter()
    raw = socket.create_connection(("127.0.0.1", server.pop3))
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(b"STLS\r\n")
    assert f.readline().startswith(b"+OK")
    context = ssl.create_default_context(cafile=server.ca)
    context.check_hostname = False
    tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(b"USER alice\r\nPASS secret\r\nLIST\r\nUIDL\r\nQUIT\r\n")
    # The server closes the connection after answering QUIT: read until then.
    data = bytearray()
    while True:
        try:
            chunk = tls.recv(1 << 20)
        except ssl.SSLEOFError:
            break
        if not chunk:
            break
        data += chunk
    if data.count(b"\r\n.\r\n") != 2:
        raise SystemExit("bench: the bare exchange did not get both LIST and UIDL")
    tls.close()
    seconds = time.perf_counter() - start
    return seconds, data.count(b"\r\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("count", nargs="?", type=int, default=1000000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--port-base", type=int, default=12400)
    p.add_argument("--baseline")
    a = p.parse_args()
    common.build()
    work = os.path.join(OUT, "backup-large")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    B.give_away(work)
    os.makedirs(os.path.join(work, "bin"))
    binary = os.path.join(work, "bin", "popvault")
    shutil.copy(common.POPVAULT, binary)
    B.give_away(os.path.join(work, "bin"))
    B.POPVAULT = binary
    baseline = None
    if a.baseline:
        baseline = os.path.join(work, "bin", "popvault-baseline")
        shutil.copy(a.baseline, baseline)
        B.give_away(baseline)
    server = MboxServer(a.count, a.port_base, work)
    bench = B.Bench(work)
    try:
        B.log("warming up (Dovecot indexes the Maildir on its first session)")
        bare_exchange(server)
        rows = []
        B.log("popvault: full backup")
        t, m, archive = bench.popvault(server, server.pop3)
        rows.append(("popvault backup, everything new", t, m))
        if baseline:
            B.POPVAULT = baseline
            B.log("popvault (baseline): full backup")
            tb, mb, archive_b = bench.popvault(server, server.pop3)
            rows.append(("popvault (baseline) backup, everything new", tb, mb))
            B.POPVAULT = binary
        B.log("mpop: full download")
        tm, mm, state = bench.mpop(server, server.pop3)
        rows.append(("mpop, everything new", tm, mm))
        bare, pv, mp, pb = [], [], [], []
        for run in range(a.runs):
            bare.append(bare_exchange(server)[0])
            pv.append(bench.popvault(server, server.pop3, archive=archive)[:2])
            if baseline:
                B.POPVAULT = baseline
                pb.append(bench.popvault(server, server.pop3, archive=archive_b)[:2])
                B.POPVAULT = binary
            mp.append(bench.mpop(server, server.pop3, state=state)[:2])
            B.log(f"nothing new, run {run + 1}: bare {bare[-1]:.2f} s, popvault {pv[-1][0]:.2f} s, mpop {mp[-1][0]:.2f} s")
        rows.append(("bare LIST + UIDL exchange (STLS, login)", median(bare), None))
        rows.append(("popvault backup, nothing new", median([x[0] for x in pv]), max(x[1] for x in pv)))
        if baseline:
            rows.append(("popvault (baseline) backup, nothing new", median([x[0] for x in pb]), max(x[1] for x in pb)))
        rows.append(("mpop, nothing new (only_new)", median([x[0] for x in mp]), max(x[1] for x in mp)))
        print(f"{a.count:,} messages of about 2 kB on the server; medians of {a.runs} nothing-new runs\n")
        print("| run | time | peak RSS |\n|---|---|---|")
        for name, t, m in rows:
            print(f"| {name} | {t:.2f} s | {'—' if m is None else f'{m:.0f} MB'} |")
        nothing = median([x[0] for x in pv])
        print(f"\npopvault nothing-new minus the bare exchange: {nothing - median(bare):+.2f} s; "
              f"against mpop: {nothing / median([x[0] for x in mp]):.2f}x its time")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
