#!/usr/bin/env python3
"""POP3 backup benchmark: popvault against mpop, getmail6 and fetchmail, over TLS.

A throwaway Dovecot (samples/dovecot-sandbox.sh) on 127.0.0.1 holds the generated COUNT-message
Maildir. Every tool downloads the whole mailbox into a fresh target (popvault: a fresh archive;
the others: a fresh Maildir and fresh UIDL state), keeping mail on the server, and each run is
checked to have fetched every message. Measured side by side in one run: wall time and peak RSS,
on plain loopback and through bench/delay_proxy.py (25 ms each way, a 50 ms round trip), plus the
incremental run with nothing new (popvault, and mpop with only_new as the nearest peer).

  popvault  pop3:// STLS, pipelined          mpop       STLS, pipelined (Maildir delivery)
  getmail6  POP3S (it has no STLS), one command at a time, a forked delivery per message
  fetchmail STLS, one command at a time, safecat as MDA (one process per message)

Without pipelining every message costs a round trip, so on the delayed link getmail6 and
fetchmail are measured on a SLOW_COUNT-message mailbox (default 2000) when COUNT is larger; the
table says which mailbox every figure comes from, and popvault and mpop are also measured on that
smaller mailbox so that the ratios compare like with like.
When run as root, every client runs as `nobody` (getmail and fetchmail refuse or warn as root).

usage: bench/backup.py [COUNT] [RUNS] [--delayed-runs N] [--slow-count N] [--port-base P]
       (defaults 2000, 3, 1, 2000, 12100; medians over the runs are reported)
"""
import argparse
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time

import common
from common import HERE, OUT, ROOT, build, maildir, median, need, table

SANDBOX = os.path.join(ROOT, "samples", "dovecot-sandbox.sh")
AS_NOBODY = os.geteuid() == 0
RUN_AS = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if AS_NOBODY else []
POPVAULT = common.POPVAULT  # replaced by a private copy in main()
TIMEOUT = 3 * 3600  # seconds for any single run: fail rather than hang


def log(msg):
    print(f"[backup.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def give_away(path):
    """Makes path (recursively) belong to the user the clients run as."""
    if AS_NOBODY:
        nobody = pwd.getpwnam("nobody")
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
        for top, dirs, files in os.walk(path):
            for name in [top] + [os.path.join(top, n) for n in dirs + files]:
                os.chown(name, nobody.pw_uid, nobody.pw_gid)


def fresh_dir(path, maildir_layout=False):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    if maildir_layout:
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(path, sub))
    give_away(path)
    return path


def write_private(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    give_away(path)


def timed(argv, env, may_fail=False):
    """Runs argv (as the client user) under /usr/bin/time: (seconds, peak RSS MB, stderr).

    A failure ends the benchmark, or with may_fail gives (seconds, None, stderr)."""
    fd, report = tempfile.mkstemp()
    os.close(fd)
    full_env = dict(os.environ, **env)
    try:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-o", report, "-f", "%M"] + RUN_AS + argv, env=full_env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=TIMEOUT)
        seconds = time.perf_counter() - start  # finer than /usr/bin/time's 10 ms
        with open(report) as f:
            rss_kb = f.read().split()[-1]
    finally:
        os.unlink(report)
    if proc.returncode != 0 and may_fail:
        return seconds, None, proc.stderr.decode()
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-3000:]}")
    return seconds, int(rss_kb) / 1024, proc.stderr.decode()


def secs(t):
    return f"{t:.2f} s" if t >= 1 else f"{t * 1000:.0f} ms"


class Server:
    """A Dovecot sandbox holding the generated Maildir of `count` messages."""

    def __init__(self, count, port_base, work):
        self.count = count
        self.pop3, self.pop3s = port_base + 10, port_base + 95
        self.imap, self.imaps = port_base + 43, port_base + 93
        self.dir = os.path.join(work, f"server-{count}")
        src = os.path.join(maildir(count), "cur")
        names = sorted(os.listdir(src))
        self.bytes = sum(os.path.getsize(os.path.join(src, n)) for n in names)  # CRLF, as served
        self.env = {"POP3_PORT": str(self.pop3), "POP3S_PORT": str(self.pop3s),
                    "IMAP_PORT": str(self.imap), "IMAPS_PORT": str(self.imaps)}
        # The mailbox goes in first (the sandbox script chowns it to the mail owner), then Dovecot starts.
        cur = os.path.join(self.dir, "home", "Maildir", "cur")
        os.makedirs(cur)
        self.lf_bytes = 0
        for name in names:
            # Maildir files hold LF line endings (as the sandbox script writes them); Dovecot serves CRLF.
            with open(os.path.join(src, name), "rb") as f:
                data = f.read().replace(b"\r\n", b"\n")
            with open(os.path.join(cur, name), "wb") as f:
                f.write(data)
            self.lf_bytes += len(data)
        log(f"starting Dovecot with {count} messages on ports {self.pop3} (STLS) and {self.pop3s} (POP3S)")
        subprocess.run([SANDBOX, "start", self.dir], env=dict(os.environ, **self.env), check=True)
        self.ca = os.path.join(self.dir, "ca.pem")

    def stop(self):
        subprocess.run([SANDBOX, "stop", self.dir], check=True)


class Proxy:
    """bench/delay_proxy.py in front of both POP3 ports of a server."""

    def __init__(self, server, delay):
        self.pop3, self.pop3s = server.pop3 + 1000, server.pop3s + 1000
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "delay_proxy.py"), "--delay", str(delay),
                                      f"{self.pop3}:{server.pop3}", f"{self.pop3s}:{server.pop3s}"],
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            sys.exit("bench: delay_proxy.py did not start")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def count_maildir(path):
    files = [os.path.join(path, sub, n) for sub in ("new", "cur") for n in os.listdir(os.path.join(path, sub))]
    return len(files), sum(os.path.getsize(f) for f in files)


class Bench:
    def __init__(self, work):
        self.work = work
        self.failures = []  # (tool, messages, seconds, last error line, messages delivered) of failed runs

    def check_maildir(self, tool, md, server):
        n, size = count_maildir(md)
        if n != server.count or size < server.lf_bytes:
            sys.exit(f"bench: {tool} fetched {n} of {server.count} messages, {size} bytes "
                     f"(at least {server.lf_bytes} expected) into {md}")

    def popvault(self, server, port, archive=None):
        """A full backup into a fresh archive (or an incremental one into `archive`)."""
        incremental = archive is not None
        archive = archive or fresh_dir(os.path.join(self.work, "popvault"))
        if not incremental:
            os.rmdir(archive)  # popvault creates it
        argv = [POPVAULT, "--archive", archive, "-q", "backup", f"pop3://alice@127.0.0.1:{port}",
                "--ca-file", server.ca]
        t, m, _ = timed(argv, {"POPVAULT_PASSWORD": "secret", "HOME": self.work})
        stats = json.loads(subprocess.run(RUN_AS + [POPVAULT, "--archive", archive, "stats", "--json"], capture_output=True,
                                          env=dict(os.environ, HOME=self.work), check=True).stdout)
        if stats["messages"] != server.count or stats["raw_bytes"] != server.bytes:
            sys.exit(f"bench: popvault archived {stats['messages']} of {server.count} messages, "
                     f"{stats['raw_bytes']} of {server.bytes} bytes")
        return t, m, archive

    def mpop(self, server, port, state=None):
        """A full download into a fresh Maildir with a fresh UIDL file (or only_new with `state`)."""
        incremental = state is not None
        base = state or fresh_dir(os.path.join(self.work, "mpop"))
        md = os.path.join(base, "Maildir")
        if not incremental:
            fresh_dir(md, maildir_layout=True)
        rc = os.path.join(base, "mpoprc")
        write_private(rc, f"""defaults
account bench
host 127.0.0.1
port {port}
user alice
auth user
password secret
tls on
tls_starttls on
tls_trust_file {server.ca}
keep on
only_new {"on" if incremental else "off"}
uidls_file {base}/uidls
delivery maildir {md}
account default : bench
""")
        t, m, _ = timed(["mpop", "-q", "-C", rc], {"HOME": base})
        self.check_maildir("mpop", md, server)
        return t, m, base

    def getmail(self, server, port):
        """getmail6 6.18 sometimes loses a delivery child (a known race: getmail6 issue #226) and
        gives up after its timeout: such a run is recorded as failed (t, None, base), not retried."""
        base = fresh_dir(os.path.join(self.work, "getmail"))
        md = fresh_dir(os.path.join(base, "Maildir"), maildir_layout=True)
        state = fresh_dir(os.path.join(base, "state"))
        rc = os.path.join(base, "getmailrc")
        write_private(rc, f"""[retriever]
type = SimplePOP3SSLRetriever
server = 127.0.0.1
port = {port}
username = alice
password = secret
ca_certs = {server.ca}

[destination]
type = Maildir
path = {md}/

[options]
delete = false
read_all = true
verbose = 0
""")
        t, m, err = timed(["getmail", "--getmaildir", state, "--rcfile", rc], {"HOME": base}, may_fail=True)
        if m is None or "error" in err.lower():
            last = err.strip().splitlines()[-1] if err.strip() else "no message"
            delivered = count_maildir(md)[0]
            self.failures.append(("getmail6", server.count, t, last, delivered))
            log(f"getmail6 failed after {t:.1f} s with {delivered} of {server.count} delivered: {last}")
            return t, None, base
        self.check_maildir("getmail", md, server)
        return t, m, base

    def fetchmail(self, server, port):
        base = fresh_dir(os.path.join(self.work, "fetchmail"))
        md = fresh_dir(os.path.join(base, "Maildir"), maildir_layout=True)
        home = fresh_dir(os.path.join(base, "home"))
        os.chmod(home, 0o700)
        rc = os.path.join(base, "fetchmailrc")
        write_private(rc, f"""set no syslog
poll 127.0.0.1 port {port} proto pop3 user alice password secret
    sslproto TLS1.2+ sslcertck sslcertfile {server.ca}
    keep fetchall
    mda "safecat {md}/tmp {md}/new"
""")
        # Exit status 0: mail was fetched (1 would be "no mail": a failure here).
        t, m, _ = timed(["fetchmail", "-f", rc, "--nosyslog", "--silent"], {"HOME": base, "FETCHMAILHOME": home})
        self.check_maildir("fetchmail", md, server)
        return t, m, base


TOOLS = [("popvault", "STLS, pipelined"), ("mpop", "STLS, pipelined"),
         ("getmail6", "POP3S, no pipelining"), ("fetchmail", "STLS, no pipelining, safecat MDA")]


def measure_all(bench, server, pop3, pop3s, runs, tools, incremental):
    """{tool: (times, rss, failed runs)} over `runs` full downloads; plus the incremental runs."""
    res = {t: ([], [], []) for t in tools}
    inc = {"popvault": ([], []), "mpop": ([], [])}
    for run in range(runs):
        for tool in tools:
            subprocess.run(["sync"], check=True)  # nobody pays for the previous tool's write-back
            if tool == "popvault":
                t, m, keep = bench.popvault(server, pop3)
                if incremental:
                    ti, mi, _ = bench.popvault(server, pop3, archive=keep)
                    inc["popvault"][0].append(ti); inc["popvault"][1].append(mi)
            elif tool == "mpop":
                t, m, keep = bench.mpop(server, pop3)
                if incremental:
                    ti, mi, _ = bench.mpop(server, pop3, state=keep)
                    inc["mpop"][0].append(ti); inc["mpop"][1].append(mi)
            elif tool == "getmail6":
                t, m, keep = bench.getmail(server, pop3s)
            else:
                t, m, keep = bench.fetchmail(server, pop3)
            shutil.rmtree(keep)
            if m is None:
                res[tool][2].append(t)
                continue
            log(f"run {run + 1}/{runs}, {server.count} messages, port {pop3}: {tool} {t:.3f} s, {m:.0f} MB")
            res[tool][0].append(t); res[tool][1].append(m)
    return res, inc


def rows_for(res, server):
    pv = median(res["popvault"][0]) if "popvault" in res else None
    rows = []
    for tool, how in TOOLS:
        if tool not in res:
            continue
        times, rss, failed = res[tool]
        done = f"{len(times)} of {len(times) + len(failed)} (others failed)" if failed else str(len(times))
        if not times:
            rows.append([tool, how, f"{server.count:,}", done, "failed", "", "", "", ""])
            continue
        t = median(times)
        ratio = "1.00 (baseline)" if tool == "popvault" else f"{t / pv:.2f}"
        rows.append([tool, how, f"{server.count:,}", done, secs(t),
                     f"{server.count / t:,.0f} msg/s", f"{server.bytes / 1e6 / t:.1f} MB/s", f"{max(rss):.0f} MB", ratio])
    return rows


HEADERS = ["tool", "how", "messages in the mailbox measured", "runs", "wall time", "messages/s", "MB/s",
           "peak RSS", "time / popvault's"]


def inc_line(inc, label):
    parts = []
    for tool, desc in (("popvault", "popvault backup"), ("mpop", "mpop with only_new on")):
        if inc[tool][0]:
            parts.append(f"{desc} {secs(median(inc[tool][0]))} (peak RSS {max(inc[tool][1]):.0f} MB)")
    return f"- {label}: " + "; ".join(parts)


def peer_versions():
    def out(*argv):
        return subprocess.run(argv, capture_output=True, text=True).stdout
    fetchmail = re.search(r"release ([0-9.]+)", out("fetchmail", "--version"))
    return (f"{out('mpop', '--version').splitlines()[0]}, {out('getmail', '--version').strip()}, "
            f"fetchmail {fetchmail.group(1) if fetchmail else '?'}")


def main():
    parser = argparse.ArgumentParser(description="POP3 backup benchmark")
    parser.add_argument("count", nargs="?", type=int, default=2000)
    parser.add_argument("runs", nargs="?", type=int, default=3)
    parser.add_argument("--delayed-runs", type=int, default=1)
    parser.add_argument("--slow-count", type=int, default=2000,
                        help="mailbox size for getmail6/fetchmail on the delayed link when COUNT is larger")
    parser.add_argument("--port-base", type=int, default=12100)
    parser.add_argument("--delay", type=float, default=0.025, help="seconds each way on the delayed link")
    args = parser.parse_args()
    need("mpop", "getmail", "fetchmail", "safecat", "/usr/bin/time", "/usr/sbin/dovecot", "setpriv")
    build()
    global POPVAULT
    # Everything of this run lives in its own directory, so runs on other --port-base can go on at once.
    work = tempfile.mkdtemp(prefix="backup-work-", dir=OUT)
    os.chmod(work, 0o755)
    # Measure a private copy: a `cargo build` in the same tree during the run must not swap it.
    binary = os.path.join(work, "popvault-measured")
    shutil.copy2(common.POPVAULT, binary)
    os.chmod(binary, 0o755)
    POPVAULT = binary
    head = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.strip()
    version = subprocess.run([POPVAULT, "--version"], capture_output=True, text=True).stdout.strip()
    with open(POPVAULT, "rb") as f:
        version += f" (binary sha256 {hashlib.sha256(f.read()).hexdigest()[:12]})"
    load_start = os.getloadavg()[0]
    clients = os.path.join(work, "clients")
    os.makedirs(clients)
    give_away(clients)
    bench = Bench(clients)
    servers, proxies = [], []
    try:
        big = Server(args.count, args.port_base, work)
        servers.append(big)
        small = big
        if args.count > args.slow_count:
            small = Server(args.slow_count, args.port_base + 200, work)
            servers.append(small)
        for s in servers:
            proxies.append(Proxy(s, args.delay))
            # Warm-up, not measured: Dovecot builds its index and caches, the page cache fills.
            log(f"warm-up on the {s.count}-message mailbox")
            _, _, a = bench.popvault(s, s.pop3)
            shutil.rmtree(a)
        names = [t for t, _ in TOOLS]
        rtt = 2 * args.delay * 1000

        log("loopback")
        loop_res, loop_inc = measure_all(bench, big, big.pop3, big.pop3s, args.runs, names, True)
        log("delayed link")
        px = proxies[0]
        if small is big:
            del_res, del_inc = measure_all(bench, big, px.pop3, px.pop3s, args.delayed_runs, names, True)
            delayed_rows = rows_for(del_res, big)
        else:
            del_res, del_inc = measure_all(bench, big, px.pop3, px.pop3s, args.delayed_runs,
                                           ["popvault", "mpop"], True)
            spx = proxies[1]
            small_res, _ = measure_all(bench, small, spx.pop3, spx.pop3s, args.delayed_runs, names, False)
            delayed_rows = (rows_for(del_res, big) +
                            rows_for(small_res, small))
    finally:
        for p in proxies:
            p.stop()
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)

    mb = big.bytes / 1e6
    load_end = os.getloadavg()[0]
    print(f"## POP3 backup: {args.count:,} generated messages, {mb:.1f} MB as served, from Dovecot over TLS\n")
    print(f"Every run downloads the whole mailbox into a fresh target and keeps mail on the server; "
          f"each run is checked to have fetched every message. Loopback: median of {args.runs} runs; "
          f"delayed link (bench/delay_proxy.py, {args.delay * 1000:.0f} ms each way): "
          f"{args.delayed_runs} run(s). Peak RSS is the largest over the runs. "
          f"Clients run as {'nobody' if AS_NOBODY else 'the current user'}. {version} built from {head}"
          f"{' plus uncommitted changes to src/ or Cargo.*' if dirty else ''}; "
          f"{peer_versions()}. Load average (1 min, {os.cpu_count()} cores, shared with other work): "
          f"{load_start:.2f} at the start, {load_end:.2f} at the end.\n")
    print("### Loopback\n")
    print(table(HEADERS, rows_for(loop_res, big)))
    print(f"\n### Delayed link, {rtt:.0f} ms round trip\n")
    print(table(HEADERS, delayed_rows))
    if small is not big:
        print(f"\ngetmail6 and fetchmail were measured on the delayed link with a {small.count:,}-message mailbox "
              f"only, not {args.count:,}: without pipelining every message costs at least one round trip, "
              f"so {args.count:,} would take at least {args.count * rtt / 1000 / 60:.0f} minutes each. They are "
              f"compared with popvault and mpop on that same {small.count:,}-message mailbox; nothing is "
              f"extrapolated.")
    if bench.failures:
        print("\nFailed runs, left out of the figures above (getmail6 6.18 can lose track of a delivery child, a "
              "known race, getmail6 issue #226, and then gives up after a timeout):\n")
        for tool, n, t, why, delivered in bench.failures:
            print(f"- {tool}, {n:,}-message mailbox: failed after {t:.1f} s with {delivered:,} of {n:,} messages "
                  f"delivered: `{why}`")
    print("\n### Incremental run, nothing new (same archive / same UIDL file)\n")
    print(inc_line(loop_inc, f"loopback ({args.count:,} messages, median of {args.runs})"))
    print(inc_line(del_inc, f"{rtt:.0f} ms round trip ({args.count:,} messages, {args.delayed_runs} run(s))"))

    def ratio_text(res, label):
        pv = median(res["popvault"][0])
        return (f"{label}: " + ", ".join(f"{tool} {median(res[tool][0]) / pv:.2f}x"
                                         for tool, _ in TOOLS[1:] if tool in res and res[tool][0]))
    print("\nRatios (peer wall time / popvault wall time, above 1 means popvault is faster):\n")
    print(f"- {ratio_text(loop_res, f'loopback, {args.count:,} messages')}")
    if small is big:
        print(f"- {ratio_text(del_res, f'{rtt:.0f} ms RTT, {args.count:,} messages')}")
    else:
        print(f"- {ratio_text(del_res, f'{rtt:.0f} ms RTT, {args.count:,} messages')}")
        print(f"- {ratio_text(small_res, f'{rtt:.0f} ms RTT, {small.count:,} messages')}")


if __name__ == "__main__":
    main()
