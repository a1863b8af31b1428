#!/usr/bin/env python3
"""POP3 → IMAP forwarding benchmark (issue 15), one run, over TLS.

A throwaway Dovecot (samples/dovecot-sandbox.sh) holds the generated COUNT-message Maildir as the
POP3 INBOX; the same Dovecot's IMAP side takes the forwarded mail, each tool into a folder of
its own (checked to hold every message, then deleted). Mail stays on the POP3 server.

  popvault forward        the first forward: backup pass, then delivery (APPEND, pipelined)
  backup + restore        `popvault backup` then `popvault restore --to imaps://... --unread`
  fetchmail + LDA         fetchmail (POP3 STLS, keep) delivering through dovecot-lda -m FOLDER

On loopback with COUNT messages, and through bench/delay_proxy.py (a 50 ms round trip, in front
of both POP3 and IMAP) with SLOW_COUNT messages for all three (fetchmail does not pipeline:
every message costs round trips). Then the latency of `forward --every 30s`: a message put on
the POP3 server at a random moment, timed until it is in the IMAP folder.

usage: bench/forward.py [COUNT] [SLOW_COUNT] [--port-base P]   (defaults 20000, 2000, 14100)
"""
import argparse
import imaplib
import os
import random
import shutil
import ssl
import subprocess
import sys
import time

import backup
import common
from common import OUT, build, need, table

WORK = os.path.join(OUT, "forward-work")


def write_config(home, server, pop3_port, imaps_port, folder):
    d = os.path.join(home, ".config", "popvault")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "config.toml")
    with open(path, "w") as f:
        f.write(f'''[[account]]
name = "bench"
server = "pop3s://alice@127.0.0.1:{pop3_port}"
ca_file = "{server.ca}"
password_command = "printf secret"
forward_to = "imaps://alice@127.0.0.1:{imaps_port}/{folder}"
forward_ca_file = "{server.ca}"
forward_password_command = "printf secret"
''')
    os.chmod(path, 0o600)
    return path


def imap(server):
    ctx = ssl.create_default_context(cafile=server.ca)
    c = imaplib.IMAP4_SSL("127.0.0.1", server.imaps, ssl_context=ctx)
    c.login("alice", "secret")
    return c


def count_folder(server, folder):
    with imap(server) as c:
        typ, data = c.select(f'"{folder}"', readonly=True)
        return int(data[0]) if typ == "OK" else 0


def check_and_delete(server, tool, folder, expected):
    n = count_folder(server, folder)
    if n != expected:
        sys.exit(f"bench: {tool} delivered {n} of {expected} messages into {folder}")
    with imap(server) as c:
        c.delete(f'"{folder}"')


def fresh_home(name):
    home = os.path.join(WORK, name)
    shutil.rmtree(home, ignore_errors=True)
    os.makedirs(home)
    backup.give_away(home)
    return home


def env_for(home):
    return {"HOME": home, "XDG_CONFIG_HOME": os.path.join(home, ".config"),
            "XDG_CACHE_HOME": os.path.join(home, ".cache"), "POPVAULT_PASSWORD": "secret"}


def pv_forward(server, pop3s, imaps, tag):
    home = fresh_home(f"pv-forward-{tag}")
    folder = f"Fwd{tag}"
    write_config(home, server, pop3s, imaps, folder)
    backup.give_away(home)
    archive = os.path.join(home, "archive")
    t, rss, _ = backup.timed([backup.POPVAULT, "--archive", archive, "-q", "forward"], env_for(home))
    check_and_delete(server, "popvault forward", folder, server.count)
    return t, rss


def pv_backup_restore(server, pop3s, imaps, tag):
    home = fresh_home(f"pv-restore-{tag}")
    folder = f"Rest{tag}"
    archive = os.path.join(home, "archive")
    env = env_for(home)
    t1, r1, _ = backup.timed([backup.POPVAULT, "--archive", archive, "-q", "backup",
                              f"pop3s://alice@127.0.0.1:{pop3s}", "--ca-file", server.ca], env)
    t2, r2, _ = backup.timed([backup.POPVAULT, "--archive", archive, "-q", "restore", "--unread",
                              "--to", f"imaps://alice@127.0.0.1:{imaps}/{folder}", "--ca-file", server.ca], env)
    check_and_delete(server, "backup + restore", folder, server.count)
    return t1 + t2, max(r1, r2)


def fetchmail_lda(server, pop3, tag):
    home = fresh_home(f"fetchmail-{tag}")
    folder = f"Fetch{tag}"
    rc = os.path.join(home, "fetchmailrc")
    # The LDA runs as the fetchmail user, which owns the mailbox: without -d it delivers to that
    # user's mail_location, with no userdb lookup (the sandbox's own config holds its TLS key).
    conf = os.path.join(home, "lda.conf")
    with open(conf, "w") as f:
        f.write(f"base_dir = {home}/lda-run\nlog_path = {home}/lda.log\n"
                f"mail_location = maildir:{server.dir}/home/Maildir\nfirst_valid_uid = 1\n"
                f"lda_mailbox_autocreate = yes\npostmaster_address = postmaster@example.org\n")
    lda = f"/usr/lib/dovecot/dovecot-lda -c {conf} -m {folder}"
    with open(rc, "w") as f:
        f.write(f'set no syslog\npoll 127.0.0.1 port {pop3} protocol pop3 user "alice" password "secret" '
                f'sslproto tls1.2+ sslcertck sslcertfile "{server.ca}" keep fetchall mda "{lda}"\n')
    os.chmod(rc, 0o600)
    backup.give_away(home)
    t, rss, _ = backup.timed(["fetchmail", "-f", rc, "--nodetach", "--nosyslog", "--pidfile",
                              os.path.join(home, "pid"), "-s"], {"HOME": home})
    check_and_delete(server, "fetchmail + dovecot-lda", folder, server.count)
    return t, rss


def latency(server, samples):
    """forward --every 30s: seconds from a message's arrival on POP3 to its presence in IMAP."""
    home = fresh_home("pv-every")
    folder = "Every"
    write_config(home, server, server.pop3s, server.imaps, folder)
    backup.give_away(home)
    archive = os.path.join(home, "archive")
    cmd = backup.RUN_AS + [backup.POPVAULT, "--archive", archive, "-q", "forward", "--every", "30s"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, **env_for(home)), stdin=subprocess.DEVNULL)
    rng = random.Random(7)
    out = []
    try:
        # The first pass archives the whole mailbox (and starts the journal after it).
        deadline = time.time() + 600
        while not os.path.isdir(os.path.join(archive, "forward")):
            if time.time() > deadline or proc.poll() is not None:
                sys.exit("bench: forward --every did not start")
            time.sleep(0.5)
        time.sleep(rng.uniform(0, 30))
        for n in range(samples):
            before = count_folder(server, folder)
            name = f"{int(time.time())}.latency{n}.bench"
            cur = os.path.join(server.dir, "home", "Maildir")
            tmp = os.path.join(cur, "tmp", name)
            with open(tmp, "wb") as f:
                f.write(f"From: a@example.org\nSubject: latency {n}\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n\nhi\n".encode())
            backup.give_away(tmp)
            os.rename(tmp, os.path.join(cur, "new", name))
            arrived = time.time()
            while count_folder(server, folder) <= before:
                if time.time() - arrived > 300:
                    sys.exit("bench: a message never arrived")
                time.sleep(0.2)
            out.append(time.time() - arrived)
            time.sleep(rng.uniform(0, 30))
    finally:
        proc.terminate()
        proc.wait()
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("count", nargs="?", type=int, default=20000)
    p.add_argument("slow_count", nargs="?", type=int, default=2000)
    p.add_argument("--port-base", type=int, default=14100)
    args = p.parse_args()
    need("fetchmail", "dovecot")
    build()
    os.makedirs(WORK, exist_ok=True)
    backup.POPVAULT = os.path.join(WORK, "popvault")
    shutil.copy(common.POPVAULT, backup.POPVAULT)
    os.chmod(backup.POPVAULT, 0o755)
    rows = []
    for count, delayed in ((args.count, False), (args.slow_count, True)):
        server = backup.Server(count, args.port_base + (500 if delayed else 0), WORK)
        try:
            pop3, pop3s, imaps = server.pop3, server.pop3s, server.imaps
            proxy = None
            if delayed:
                proxy = backup.Proxy(server, 0.025)
                imap_proxy = subprocess.Popen([sys.executable, os.path.join(backup.HERE, "delay_proxy.py"),
                                               "--delay", "0.025", f"{imaps + 1000}:{imaps}"],
                                              stdout=subprocess.PIPE, text=True)
                if imap_proxy.stdout.readline().strip() != "ready":
                    sys.exit("bench: delay_proxy.py did not start")
                pop3, pop3s, imaps = proxy.pop3, proxy.pop3s, imaps + 1000
            link = "50 ms round trip" if delayed else "loopback"
            tag = "d" if delayed else "l"
            f = pv_forward(server, pop3s, imaps, tag)
            b = pv_backup_restore(server, pop3s, imaps, tag)
            m = fetchmail_lda(server, pop3, tag)
            rows.append((link, count, f, b, m))
            if delayed:
                proxy.stop()
                imap_proxy.kill()
                imap_proxy.wait()
            else:
                lat = latency(server, 3)
        finally:
            server.stop()
    print("## POP3 → IMAP forwarding (issue 15)\n")
    print(table(["link", "messages", "popvault forward", "popvault backup + restore", "fetchmail + dovecot-lda"],
          [[link, f"{count:,}", f"{f[0]:.2f} s ({f[1]:.0f} MB)", f"{b[0]:.2f} s ({b[1]:.0f} MB)",
            f"{m[0]:.2f} s ({m[1]:.0f} MB)"] for link, count, f, b, m in rows]))
    print()
    for link, count, f, b, m in rows:
        print(f"- {link}, {count:,} messages: forward / (backup + restore) {f[0] / b[0]:.2f}x; "
              f"fetchmail is {m[0] / f[0]:.2f}x forward")
    print(f"- `forward --every 30s`, arrival on POP3 to presence in IMAP: "
          + ", ".join(f"{x:.1f} s" for x in lat) + f" (mean {sum(lat) / len(lat):.1f} s)")


if __name__ == "__main__":
    main()
