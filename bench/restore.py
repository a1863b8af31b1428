#!/usr/bin/env python3
"""Restore benchmark: popvault restore against mbsync (IMAP), and against restic restore, borg
extract and cp -r + sync (Maildir).

An archive is built (not timed) by importing the generated COUNT-message Maildir. Then, side by
side in one run, with the page cache warmed the same way (source Maildir and archive read to
/dev/null) and a `sync` before every timed step so nobody pays for the previous one's write-back:

  IMAP     popvault `restore --to imap://...` (STARTTLS) and mbsync (isync) pushing the same
           Maildir (`Sync Push`, `Create Far`, `CopyArrivalDate yes`, STARTTLS) into a new, empty
           folder of the same throwaway Dovecot (samples/dovecot-sandbox.sh); on loopback and
           through bench/delay_proxy.py (25 ms each way by default) in front of the STARTTLS port.
           Every folder is checked afterwards over IMAPS (message count and total size) and
           deleted. mbsync gets a hard-linked copy of the Maildir per run (it writes its state and
           renames files in it).
  Maildir  popvault `restore --to maildir:FRESH` (durable: it syncs the file system) against
           `restic restore` and `borg extract` of the same Maildir (both verify what they read), each
           followed by `sync`, and `cp -r SRC/cur FRESH/cur && sync`; every result is checked
           (count and bytes). Each writes into a new, empty ext4 file system.

If COUNT > SLOW_COUNT, both IMAP tools are first measured on the delayed link with a SLOW_COUNT
mailbox; mbsync is then run with COUNT over the delayed link only if that predicts (linearly) less
than --mbsync-limit seconds, otherwise the table says that only the SLOW_COUNT figures exist.
The popvault binary is copied once at the start, so a rebuild by someone else mid-run changes
nothing here.

usage: bench/restore.py [COUNT] [RUNS] [--delayed-runs N] [--slow-count N] [--port-base P]
                        [--delay SECONDS] [--mbsync-limit SECONDS]
       (defaults 20000, 1, 1, 2000, 15100, 0.025, 900; medians over the runs are reported)
Ports: Dovecot on P+10 (POP3), P+95 (POP3S), P+43 (IMAP STARTTLS), P+93 (IMAPS); the delay
proxy on P+1043.
"""
import argparse
import imaplib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time

from common import HERE, OUT, POPVAULT, ROOT, build, maildir, median, need, table

SANDBOX = os.path.join(ROOT, "samples", "dovecot-sandbox.sh")
BORG_ENV = {"BORG_PASSPHRASE": "", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes", "BORG_BASE_DIR": os.path.join(OUT, "restore-work", "borg-home")}
RESTIC_ENV = {"RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": os.path.join(OUT, "restore-work", "restic-cache")}
TIMEOUT = 3 * 3600  # seconds for any single timed run: fail rather than hang
WORK = os.path.join(OUT, "restore-work")


def log(msg):
    print(f"[restore.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(argv, env=None, cwd=None):
    """Runs argv under /usr/bin/time: (wall seconds, peak RSS in MB). Exits on failure."""
    fd, report = tempfile.mkstemp()
    os.close(fd)
    try:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-o", report, "-f", "%M"] + argv,
                              env=dict(os.environ, **(env or {})), cwd=cwd, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=TIMEOUT)
        seconds = time.perf_counter() - start  # finer than /usr/bin/time's 10 ms
        with open(report) as f:
            rss_kb = f.read().split()[-1]
    finally:
        os.unlink(report)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-3000:]}")
    return seconds, int(rss_kb) / 1024


def secs(t):
    return f"{t:.2f} s" if t >= 1 else f"{t * 1000:.0f} ms"


def sync():
    subprocess.run(["sync"], check=True)


def cpu_times():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def disk_written():
    """Bytes written so far to the whole disks (not partitions, not loop or ram devices)."""
    total = 0
    with open("/proc/diskstats") as f:
        for line in f:
            fields = line.split()
            name = fields[2]
            if os.path.exists(f"/sys/block/{name}/device"):
                total += int(fields[9]) * 512
    return total


NOISY = []  # timed steps that started while other work kept the CPUs busy


def wait_quiet(what, max_wait=300, busy_limit=0.15, write_limit=4 << 20):
    """Waits (up to max_wait seconds) for a second in which the CPUs are at most busy_limit busy
    and at most write_limit bytes are written to disk: the machine is shared, and someone else's
    build halves the CPU a tool gets and makes every fsync (Dovecot's, popvault's) slow."""
    start = time.monotonic()
    busy, written = 1.0, 0
    while time.monotonic() - start < max_wait:
        (total0, idle0), disk0 = cpu_times(), disk_written()
        time.sleep(1)
        (total1, idle1), disk1 = cpu_times(), disk_written()
        busy = 1 - (idle1 - idle0) / max(1, total1 - total0)
        written = disk1 - disk0
        if busy <= busy_limit and written <= write_limit:
            return
    log(f"warning: still {100 * busy:.0f}% CPU busy, {written / 1e6:.0f} MB/s written to disk after "
        f"{max_wait} s; measuring {what} anyway")
    NOISY.append(what)


def warm(*paths):
    """Reads every file under the paths to /dev/null, so all tools start from the same page cache."""
    for path in paths:
        subprocess.run(f"find '{path}' -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True)


class Source:
    """The generated Maildir of `count` messages and a popvault archive imported from it."""

    def __init__(self, count, popvault):
        self.count = count
        self.maildir = maildir(count)
        cur = os.path.join(self.maildir, "cur")
        names = os.listdir(cur)
        self.bytes = sum(os.path.getsize(os.path.join(cur, n)) for n in names)  # CRLF, as IMAP wants
        self.archive = os.path.join(WORK, f"archive-{count}")
        shutil.rmtree(self.archive, ignore_errors=True)
        log(f"importing the {count}-message Maildir into {self.archive} (not timed)")
        subprocess.run([popvault, "--archive", self.archive, "-q", "import", f"maildir:{self.maildir}"],
                       env=dict(os.environ, HOME=WORK), check=True)
        stats = json.loads(subprocess.run([popvault, "--archive", self.archive, "stats", "--json"],
                                          env=dict(os.environ, HOME=WORK), capture_output=True,
                                          check=True).stdout)
        if stats["messages"] != count or stats["raw_bytes"] != self.bytes:
            sys.exit(f"bench: the archive holds {stats['messages']} messages, {stats['raw_bytes']} bytes; "
                     f"expected {count}, {self.bytes}")
        # The same Maildir in a borg and a restic repository (as bench/archive.py makes them), for
        # `borg extract` and `restic restore`, which verify what they read as they restore.
        self.borg = os.path.join(WORK, f"borg-{count}")
        self.restic = os.path.join(WORK, f"restic-{count}")
        log(f"backing the Maildir up with borg and restic (not timed)")
        subprocess.run(["borg", "init", "-e", "none", self.borg], env=dict(os.environ, **BORG_ENV), check=True)
        subprocess.run(["borg", "create", "--compression", "zstd,3", f"{self.borg}::a", "cur"],
                       env=dict(os.environ, **BORG_ENV), cwd=self.maildir, check=True)
        subprocess.run(["restic", "init", "-q", "-r", self.restic], env=dict(os.environ, **RESTIC_ENV), check=True)
        subprocess.run(["restic", "-q", "-r", self.restic, "backup", os.path.join(self.maildir, "cur")],
                       env=dict(os.environ, **RESTIC_ENV), check=True)

    def warm(self):
        warm(self.maildir, self.archive, self.borg, self.restic)


class Server:
    """An empty throwaway Dovecot."""

    def __init__(self, port_base):
        self.pop3, self.pop3s = port_base + 10, port_base + 95
        self.imap, self.imaps = port_base + 43, port_base + 93
        self.dir = os.path.join(WORK, "dovecot")
        self.env = {"POP3_PORT": str(self.pop3), "POP3S_PORT": str(self.pop3s),
                    "IMAP_PORT": str(self.imap), "IMAPS_PORT": str(self.imaps)}
        log(f"starting Dovecot on ports {self.imap} (IMAP, STARTTLS) and {self.imaps} (IMAPS)")
        subprocess.run([SANDBOX, "start", self.dir], env=dict(os.environ, **self.env), check=True)
        self.ca = os.path.join(self.dir, "ca.pem")

    def stop(self):
        subprocess.run([SANDBOX, "stop", self.dir], check=True)

    def check_and_delete(self, tool, folder, source, exact):
        """Exits unless `folder` holds source.count messages of the right total size; then deletes it.
        mbsync adds an X-TUID header to every message, hence `exact` only for popvault."""
        ctx = ssl.create_default_context(cafile=self.ca)
        with imaplib.IMAP4_SSL("127.0.0.1", self.imaps, ssl_context=ctx) as c:
            c.login("alice", "secret")
            typ, data = c.select(f'"{folder}"', readonly=True)
            if typ != "OK":
                sys.exit(f"bench: {tool} left no folder {folder}: {data}")
            n = int(data[0])
            size = 0
            if n:
                typ, data = c.fetch("1:*", "(RFC822.SIZE)")
                size = sum(int(m.group(1)) for d in data if isinstance(d, bytes)
                           for m in [re.search(rb"RFC822\.SIZE (\d+)", d)] if m)
            c.close()
            ok = n == source.count and (size == source.bytes if exact else
                                        source.bytes <= size <= source.bytes + 200 * source.count)
            if not ok:
                sys.exit(f"bench: {tool} put {n} of {source.count} messages, {size} bytes "
                         f"({source.bytes} {'expected' if exact else 'plus headers expected'}) into {folder}")
            typ, data = c.delete(f'"{folder}"')
            if typ != "OK":
                sys.exit(f"bench: could not delete {folder}: {data}")


class Proxy:
    """bench/delay_proxy.py in front of the STARTTLS IMAP port."""

    def __init__(self, server, delay, port):
        self.imap = port
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "delay_proxy.py"), "--delay", str(delay),
                                      f"{port}:{server.imap}"], stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            sys.exit("bench: delay_proxy.py did not start")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Bench:
    def __init__(self, popvault, server):
        self.popvault = popvault
        self.server = server
        self.folders = 0

    def folder(self, tool):
        self.folders += 1
        return f"Bench{self.folders}{tool}"

    def pv_imap(self, source, port, what=None):
        folder = self.folder("popvault")
        if what:
            wait_quiet(what)
        t, m = timed([self.popvault, "--archive", source.archive, "-q", "restore",
                      "--to", f"imap://alice@127.0.0.1:{port}/{folder}", "--ca-file", self.server.ca],
                     env={"POPVAULT_PASSWORD": "secret", "HOME": WORK})
        self.server.check_and_delete("popvault", folder, source, exact=True)
        return t, m

    def mbsync(self, source, port, what):
        folder = self.folder("mbsync")
        base = os.path.join(WORK, "mbsync")
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        md = os.path.join(base, "Maildir")
        # Hard links: the same inodes (so the same warm page cache) in a directory mbsync may
        # write its state into and rename files in; the files' contents are never changed.
        subprocess.run(["cp", "-al", source.maildir, md], check=True)
        rc = os.path.join(base, "mbsyncrc")
        with open(rc, "w") as f:
            f.write(f"""IMAPAccount bench
Host 127.0.0.1
Port {port}
User alice
Pass secret
SSLType STARTTLS
SystemCertificates no
CertificateFile {self.server.ca}

IMAPStore remote
Account bench

MaildirStore local
Path {md}/
Inbox {md}

Channel push
Far :remote:{folder}
Near :local:
Create Far
Sync Push
Expunge None
CopyArrivalDate yes
SyncState *
""")
        os.chmod(rc, 0o600)
        sync()
        wait_quiet(what)
        t, m = timed(["mbsync", "-q", "-c", rc, "push"], env={"HOME": base}, cwd=base)
        self.server.check_and_delete("mbsync", folder, source, exact=False)
        shutil.rmtree(base)
        return t, m

    def imap_runs(self, source, port, runs, tools, label):
        res = {t: ([], []) for t in tools}
        for run in range(runs):
            # Alternate the order, so that neither tool always goes first.
            order = tools if run % 2 == 0 else list(reversed(tools))
            for tool in order:
                source.warm()
                sync()
                what = f"{label} {tool} run {run + 1} ({source.count} messages)"
                t, m = self.pv_imap(source, port, what) if tool == "popvault" else self.mbsync(source, port, what)
                log(f"{label} run {run + 1}/{runs}, {source.count} messages: {tool} {t:.3f} s, {m:.0f} MB")
                res[tool][0].append(t); res[tool][1].append(m)
        return res

    def maildir_runs(self, source, runs):
        """Each tool writes into a new, empty ext4 file system (FreshFs): on a reused one, ext4
        without a journal walks the inodes the previous run freed on every create (its
        `recently_deleted` check, for up to 6 minutes), which made the results depend on the
        order of the runs more than on the tools."""
        tools = ["popvault", "restic", "borg", "cp", "verify"]
        res = {tool: ([], []) for tool in tools}
        for run in range(runs):
            order = tools if run % 2 == 0 else tools[::-1]
            for tool in order:
                source.warm()
                if tool == "verify":
                    # The decompression and SHA-256 that a restore must do, with no writing.
                    sync()
                    wait_quiet(f"verify --full run {run + 1}")
                    t, m = timed([self.popvault, "--archive", source.archive, "-q", "verify", "--full"])
                    log(f"Maildir run {run + 1}/{runs}: verify --full {t:.3f} s, {m:.0f} MB")
                    res[tool][0].append(t); res[tool][1].append(m)
                    continue
                with FreshFs(os.path.join(WORK, "fs.img"), os.path.join(WORK, "mnt"), source.bytes) as fs:
                    dest = os.path.join(fs.root, "maildir")
                    if tool in ("cp", "restic"):
                        os.makedirs(dest)
                    sync()
                    wait_quiet(f"Maildir {tool} run {run + 1} ({source.count} messages)")
                    cur = os.path.join(dest, "cur")
                    if tool == "popvault":
                        t, m = timed([self.popvault, "--archive", source.archive, "-q", "restore", "--to",
                                      f"maildir:{dest}"], env={"HOME": WORK})
                    elif tool == "restic":
                        # restic 0.14 restores the backed-up path whole, under the target.
                        t, m = timed(["sh", "-c", 'restic -q -r "$0" restore latest --target "$1" && sync',
                                      source.restic, dest], env=RESTIC_ENV)
                        cur = dest + os.path.join(source.maildir, "cur")
                    elif tool == "borg":
                        os.makedirs(dest)
                        t, m = timed(["sh", "-c", 'cd "$1" && borg extract "$0::a" && sync', source.borg, dest],
                                     env=BORG_ENV)
                    else:
                        t, m = timed(["sh", "-c", 'cp -r "$0/cur" "$1/cur" && sync', source.maildir, dest])
                    names = os.listdir(cur)
                    size = sum(os.path.getsize(os.path.join(cur, n)) for n in names)
                    if len(names) != source.count or size != source.bytes:
                        sys.exit(f"bench: {tool} wrote {len(names)} of {source.count} messages, {size} of "
                                 f"{source.bytes} bytes into {cur}")
                log(f"Maildir run {run + 1}/{runs}, {source.count} messages: {tool} {t:.3f} s, {m:.0f} MB")
                res[tool][0].append(t); res[tool][1].append(m)
        return res


class FreshFs:
    """A new ext4 file system (default mkfs options, so with a journal) in an image file, on a
    loop device with direct I/O, so that a sync of it reaches the disk. Needs root, mkfs.ext4 and
    losetup; without them, a fresh directory of the current file system."""

    def __init__(self, image, mountpoint, payload_bytes):
        self.image, self.mountpoint, self.device = image, mountpoint, None
        self.size = max(1 << 30, 3 * payload_bytes)
        self.root = mountpoint

    @staticmethod
    def available():
        return os.geteuid() == 0 and shutil.which("mkfs.ext4") and shutil.which("losetup")

    def __enter__(self):
        shutil.rmtree(self.mountpoint, ignore_errors=True)
        os.makedirs(self.mountpoint)
        if not self.available():
            return self
        with open(self.image, "wb") as f:
            f.truncate(self.size)
        subprocess.run(["mkfs.ext4", "-q", "-F", self.image], check=True)
        self.device = subprocess.run(["losetup", "--direct-io=on", "-f", "--show", self.image],
                                     capture_output=True, text=True, check=True).stdout.strip()
        subprocess.run(["mount", self.device, self.mountpoint], check=True)
        return self

    def __exit__(self, *exc):
        if self.device:
            subprocess.run(["umount", self.mountpoint], check=True)
            subprocess.run(["losetup", "-d", self.device], check=True)
            os.unlink(self.image)
        shutil.rmtree(self.mountpoint, ignore_errors=True)


HOW = {"popvault": "restore --to imap:// (STARTTLS), LITERAL+ pipelined APPENDs",
       "mbsync": "isync, Sync Push + Create Far (STARTTLS)",
       "popvault-md": "restore --to maildir: (syncfs before renaming into cur/)",
       "cp": "cp -r cur/ && sync",
       "restic": "restic restore latest && sync (restic 0.14, repository made by restic backup)",
       "borg": "borg extract && sync (borg 1.2, zstd,3, no encryption)",
       "verify": "popvault verify --full: the decompression and re-hash alone, nothing written"}
HEADERS = ["tool", "how", "messages", "runs", "wall time (min to max)", "messages/s", "MB/s", "peak RSS",
           "time / popvault's"]


def rows_for(res, source, runs, how_keys):
    pv = median(res["popvault"][0])
    rows = []
    for tool, how in how_keys:
        if tool not in res:
            continue
        t, rss = median(res[tool][0]), max(res[tool][1])
        ratio = "1.00 (baseline)" if tool == "popvault" else f"{t / pv:.2f}"
        spread = f" ({secs(min(res[tool][0]))} to {secs(max(res[tool][0]))})" if len(res[tool][0]) > 1 else ""
        rows.append([tool, HOW[how], f"{source.count:,}", str(runs), secs(t) + spread, f"{source.count / t:,.0f} msg/s",
                     f"{source.bytes / 1e6 / t:.1f} MB/s", f"{rss:.0f} MB", ratio])
    return rows


IMAP_TOOLS = [("popvault", "popvault"), ("mbsync", "mbsync")]


def imap_runs(args, popvault, big, small):
    """The IMAP runs, loopback then delayed: (loopback, delayed, probe, delayed rows, note)."""
    rtt = 2 * args.delay * 1000
    server = proxy = None
    try:
        server = Server(args.port_base)
        proxy = Proxy(server, args.delay, args.port_base + 1043)
        bench = Bench(popvault, server)
        # Warm-up, not measured: Dovecot starts its processes and creates its indexes.
        log("warm-up (popvault restore on loopback, not measured)")
        bench.pv_imap(small or big, server.imap)

        log("IMAP on loopback")
        loop = bench.imap_runs(big, server.imap, args.runs, ["popvault", "mbsync"], "loopback")
        log("IMAP on the delayed link")
        if not small:
            delayed = bench.imap_runs(big, proxy.imap, args.delayed_runs, ["popvault", "mbsync"], f"{rtt:.0f} ms RTT")
            return loop, delayed, None, rows_for(delayed, big, args.delayed_runs, IMAP_TOOLS), ""
        probe = bench.imap_runs(small, proxy.imap, args.delayed_runs, ["popvault", "mbsync"], f"{rtt:.0f} ms RTT")
        predicted = median(probe["mbsync"][0]) * args.count / small.count
        tools = ["popvault", "mbsync"] if predicted <= args.mbsync_limit else ["popvault"]
        note = ""
        if "mbsync" not in tools:
            note = (f"\nmbsync was **not** run with {args.count:,} messages on the delayed link: at its "
                    f"{small.count:,}-message rate it would take about {predicted / 60:.0f} minutes "
                    f"(limit {args.mbsync_limit / 60:.0f}). Its only delayed-link figure is the "
                    f"{small.count:,}-message row, compared there with popvault on the same "
                    f"{small.count:,} messages.\n")
        delayed = bench.imap_runs(big, proxy.imap, args.delayed_runs, tools, f"{rtt:.0f} ms RTT")
        rows = rows_for(delayed, big, args.delayed_runs, IMAP_TOOLS) + rows_for(probe, small, args.delayed_runs, IMAP_TOOLS)
        return loop, delayed, probe, rows, note
    finally:
        if proxy:
            proxy.stop()
        if server:
            server.stop()


def main():
    parser = argparse.ArgumentParser(description="restore benchmark")
    parser.add_argument("count", nargs="?", type=int, default=20000)
    parser.add_argument("runs", nargs="?", type=int, default=1)
    parser.add_argument("--delayed-runs", type=int, default=1)
    parser.add_argument("--slow-count", type=int, default=2000,
                        help="mailbox size measured first on the delayed link when COUNT is larger")
    parser.add_argument("--port-base", type=int, default=15100)
    parser.add_argument("--delay", type=float, default=0.025, help="seconds each way on the delayed link")
    parser.add_argument("--mbsync-limit", type=float, default=900,
                        help="longest predicted mbsync run with COUNT on the delayed link, in seconds")
    parser.add_argument("--maildir-only", action="store_true", help="skip the IMAP runs")
    args = parser.parse_args()
    need("mbsync", "borg", "restic", "/usr/bin/time", "/usr/sbin/dovecot")
    build()
    # A previous run that failed may have left its Dovecot running.
    subprocess.run([SANDBOX, "stop", os.path.join(WORK, "dovecot")], check=True)
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    popvault = os.path.join(WORK, "popvault")
    shutil.copy2(POPVAULT, popvault)
    head = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.strip()
    version = subprocess.run([popvault, "--version"], capture_output=True, text=True).stdout.strip()
    mbsync_version = subprocess.run(["mbsync", "--version"], capture_output=True, text=True).stdout.strip()
    dovecot_version = subprocess.run(["/usr/sbin/dovecot", "--version"], capture_output=True, text=True).stdout.split()[0]
    rtt = 2 * args.delay * 1000
    load_start = os.getloadavg()[0]

    big = Source(args.count, popvault)
    small = Source(args.slow_count, popvault) if args.count > args.slow_count and not args.maildir_only else None
    imap = None if args.maildir_only else imap_runs(args, popvault, big, small)
    log("Maildir")
    md = Bench(popvault, None).maildir_runs(big, args.runs)
    shutil.rmtree(WORK, ignore_errors=True)

    mb = big.bytes / 1e6
    print(f"## Restore: {args.count:,} generated messages, {mb:.1f} MB\n")
    print(f"The archive is built by `popvault import` of the generated Maildir (not timed). Every run restores "
          f"into a new, empty IMAP folder of the same Dovecot {dovecot_version} (or a fresh directory) and is "
          f"checked to hold every message with the right size; before each timed run the source Maildir "
          f"and the archive are read to /dev/null and `sync` is run. Loopback and Maildir: "
          f"{f'median of {args.runs} runs, the order of the tools alternating' if args.runs > 1 else '1 run'}; delayed link (bench/delay_proxy.py, "
          f"{args.delay * 1000:.0f} ms each way, in front of the STARTTLS port for both tools): "
          f"{args.delayed_runs} run(s). Peak RSS is the largest over the runs. {version} built from {head}"
          f"{' plus uncommitted changes to src/ or Cargo.*' if dirty else ''}; {mbsync_version}; "
          f"{os.cpu_count()} cores shared with other work (1-minute load average {load_start:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end); every timed step waited for a quiet second (CPUs at most "
          f"15% busy, at most 4 MB written to disk){', except these, which waited 5 minutes in vain: ' + ', '.join(NOISY) if NOISY else ''}.\n")
    if imap:
        loop, delayed, probe, delayed_rows, note = imap
        print("### IMAP, loopback\n")
        print(table(HEADERS, rows_for(loop, big, args.runs, IMAP_TOOLS)))
        print(f"\n### IMAP, delayed link, {rtt:.0f} ms round trip\n")
        print(table(HEADERS, delayed_rows))
        print(note)
    print("### Maildir (durable copy)\n")
    print(f"Each restore and copy writes into a new, empty ext4 file system "
          f"{'(an image on a loop device with direct I/O)' if FreshFs.available() else '(a fresh directory: not root, so no loop device; the results depend on what was freed before)'}.\n")
    print(table(HEADERS, rows_for(md, big, args.runs,
                                  [("popvault", "popvault-md"), ("restic", "restic"), ("borg", "borg"),
                                   ("cp", "cp"), ("verify", "verify")])))
    pv_md, cp_md = median(md["popvault"][0]), median(md["cp"][0])
    restic_md, borg_md = median(md["restic"][0]), median(md["borg"][0])
    target = pv_md < restic_md and pv_md < borg_md
    print(f"\nTarget: faster than both `restic restore` and `borg extract`: restic takes "
          f"{restic_md / pv_md:.2f}x popvault's time, borg {borg_md / pv_md:.2f}x: "
          f"**{'met' if target else 'missed'}**. (cp -r + sync, which checks nothing, takes {cp_md / pv_md:.2f}x.)")

    def ratio(res):
        return median(res["mbsync"][0]) / median(res["popvault"][0])
    print("\nRatios (peer wall time / popvault wall time; above 1 means popvault is faster):\n")
    if imap:
        print(f"- IMAP loopback, {args.count:,} messages: mbsync {ratio(loop):.2f}x")
        if "mbsync" in delayed:
            print(f"- IMAP {rtt:.0f} ms RTT, {args.count:,} messages: mbsync {ratio(delayed):.2f}x")
        if probe:
            print(f"- IMAP {rtt:.0f} ms RTT, {small.count:,} messages: mbsync {ratio(probe):.2f}x")
    print(f"- Maildir, {args.count:,} messages: cp -r + sync {cp_md / pv_md:.2f}x; the re-hash alone "
          f"(verify --full) takes {median(md['verify'][0]) / cp_md:.2f}x the time of cp -r + sync")


if __name__ == "__main__":
    main()
