#!/usr/bin/env python3
"""POP3 backup from a server without PIPELINING (issue 10): popvault and mpop against
bench/nopipe_server.py (one command at a time, each reply in three writes without
TCP_NODELAY), and popvault against Dovecot serving the same mailbox, in one run.

All on plain TCP (no TLS: the effect measured is the one of ACK timing, and the scripted
server speaks no TLS), every run into a fresh archive or Maildir, each checked to hold every
message. Targets: popvault from the server without PIPELINING within 2x of popvault from
Dovecot, and faster than mpop from that server. Peak RSS of each run is reported too (the
issue's 64 MB target is for the Dovecot run).

usage: bench/nopipe.py [COUNT] [RUNS] [--port-base P]      (defaults 20000, 3, 12600)
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

import backup
import common
from backup import Bench, Server, fresh_dir, give_away, timed, write_private, secs, count_maildir
from common import HERE, OUT, ROOT, build, median, need, table


def log(msg):
    print(f"[nopipe.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class NoPipeServer:
    def __init__(self, maildir, port):
        self.port = port
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "nopipe_server.py"), maildir, str(port)],
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            sys.exit("bench: nopipe_server.py did not start")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def popvault(work, port, server):
    archive = os.path.join(work, "popvault")
    shutil.rmtree(archive, ignore_errors=True)
    argv = [backup.POPVAULT, "--archive", archive, "-q", "backup", f"pop3://alice@127.0.0.1:{port}", "--tls", "none"]
    t, m, _ = timed(argv, {"POPVAULT_PASSWORD": "secret", "HOME": work})
    out = subprocess.run(backup.RUN_AS + [backup.POPVAULT, "--archive", archive, "stats", "--json"],
                         capture_output=True, env=dict(os.environ, HOME=work), check=True).stdout
    import json
    stats = json.loads(out)
    if stats["messages"] != server.count or stats["raw_bytes"] != server.bytes:
        sys.exit(f"bench: popvault archived {stats['messages']} of {server.count} messages")
    shutil.rmtree(archive)
    return t, m


def mpop(work, port, server):
    base = fresh_dir(os.path.join(work, "mpop"))
    md = fresh_dir(os.path.join(base, "Maildir"), maildir_layout=True)
    rc = os.path.join(base, "mpoprc")
    write_private(rc, f"""defaults
account bench
host 127.0.0.1
port {port}
user alice
auth user
password secret
tls off
keep on
only_new off
uidls_file {base}/uidls
delivery maildir {md}
account default : bench
""")
    t, m, _ = timed(["mpop", "-q", "-C", rc], {"HOME": base})
    n, size = count_maildir(md)
    if n != server.count or size < server.lf_bytes:
        sys.exit(f"bench: mpop fetched {n} of {server.count} messages")
    shutil.rmtree(base)
    return t, m


def main():
    parser = argparse.ArgumentParser(description="POP3 backup without PIPELINING")
    parser.add_argument("count", nargs="?", type=int, default=20000)
    parser.add_argument("runs", nargs="?", type=int, default=3)
    parser.add_argument("--port-base", type=int, default=12600)
    parser.add_argument("--slow-runs", type=int, default=1,
                        help="runs of mpop against the server without PIPELINING (each can take minutes)")
    args = parser.parse_args()
    need("mpop", "/usr/bin/time", "/usr/sbin/dovecot", "setpriv")
    build()
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="nopipe-work-", dir=OUT)
    os.chmod(work, 0o755)
    binary = os.path.join(work, "popvault-measured")
    shutil.copy2(common.POPVAULT, binary)
    os.chmod(binary, 0o755)
    backup.POPVAULT = binary
    head = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h"], capture_output=True, text=True).stdout.strip()
    with open(binary, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    clients = os.path.join(work, "clients")
    os.makedirs(clients)
    give_away(clients)
    dovecot = Server(args.count, args.port_base, work)
    nopipe = NoPipeServer(os.path.join(common.maildir(args.count)), args.port_base + 50)
    load_start = os.getloadavg()[0]
    res = {k: ([], []) for k in ("dovecot-popvault", "nopipe-popvault", "nopipe-mpop", "dovecot-mpop")}
    try:
        log("warm-up")
        popvault(clients, dovecot.pop3, dovecot)
        popvault(clients, nopipe.port, dovecot)
        # mpop against the server without PIPELINING last: it mostly waits on delayed ACKs.
        plan = [(run, key) for run in range(args.runs) for key in res if key != "nopipe-mpop"]
        plan += [(run, "nopipe-mpop") for run in range(args.slow_runs)]
        for run, key in plan:
            if True:
                subprocess.run(["sync"], check=True)
                where, tool = key.split("-")
                port = dovecot.pop3 if where == "dovecot" else nopipe.port
                t, m = (popvault if tool == "popvault" else mpop)(clients, port, dovecot)
                log(f"run {run + 1}: {key} {t:.2f} s, {m:.0f} MB")
                res[key][0].append(t)
                res[key][1].append(m)
    finally:
        nopipe.stop()
        dovecot.stop()
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()[0]
    base = median(res["dovecot-popvault"][0])
    rows = []
    labels = {
        "dovecot-popvault": ("popvault", "Dovecot, PIPELINING"),
        "nopipe-popvault": ("popvault", "no PIPELINING, replies in 3 writes, Nagle on"),
        "nopipe-mpop": ("mpop", "no PIPELINING, replies in 3 writes, Nagle on"),
        "dovecot-mpop": ("mpop", "Dovecot, PIPELINING"),
    }
    for key, (tool, server) in labels.items():
        t = median(res[key][0])
        rows.append([tool, server, secs(t), f"{args.count / t:,.0f} msg/s", f"{max(res[key][1]):.0f} MB",
                     f"{t / base:.2f}"])
    print(f"## POP3 backup from a server without PIPELINING: {args.count:,} messages, "
          f"{dovecot.bytes / 1e6:.1f} MB, plain TCP on loopback\n")
    print(f"Median of {args.runs} runs each, interleaved (mpop against the server without PIPELINING: "
          f"{args.slow_runs} run(s), last); popvault {digest} built from {head}. "
          f"Load average {load_start:.2f} at the start, {load_end:.2f} at the end ({os.cpu_count()} cores).\n")
    print(table(["tool", "server", "wall time", "messages/s", "peak RSS", "time / popvault from Dovecot"], rows))
    nop = median(res["nopipe-popvault"][0])
    print(f"\n- popvault without PIPELINING: {nop / base:.2f}x its time from Dovecot (target: within 2x).")
    print(f"- mpop on the same server: {median(res['nopipe-mpop'][0]) / nop:.2f}x popvault's time "
          f"(above 1: popvault is faster).")


if __name__ == "__main__":
    main()
