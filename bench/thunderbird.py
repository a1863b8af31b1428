#!/usr/bin/env python3
"""Import of a whole Thunderbird profile (issue 16).

A throwaway Dovecot (samples/dovecot-sandbox.sh) holds the generated COUNT-message Maildir; the
real Thunderbird (Debian's, headless: tests/thunderbird/run.sh) fetches it into a fresh profile
over POP3, leaving it on the server, as POP users have it. Then, each into a fresh archive:

  import thunderbird:     popvault import thunderbird:PROFILE (every folder, recovered bytes)
  import mbox:            popvault import mbox:PROFILE/Mail/127.0.0.1/Inbox (the same file)

time and peak RSS of each, and what the first `popvault backup` of the same account downloads
after each import, against a backup into an empty archive.

usage: bench/thunderbird.py [COUNT]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import backup
import common
from common import OUT, build, measure, need, table

WORK = os.path.join(OUT, "thunderbird-work")
RUN = os.path.join(common.ROOT, "tests", "thunderbird", "run.sh")
PROFILE_SH = os.path.join(common.ROOT, "tests", "thunderbird", "profile.sh")


def popvault(*args, config=None, env=None):
    argv = [backup.POPVAULT] + (["--config", config] if config else []) + list(args)
    return subprocess.run(argv, env=dict(os.environ, **(env or {})), capture_output=True, check=True).stdout


def start_server(count, port_base):
    """The Dovecot of the profile: the same mailbox each run (its UIDLs carry its UIDVALIDITY,
    which a new mailbox would change, and Thunderbird recorded them)."""
    path = os.path.join(WORK, f"server-{count}")
    if not os.path.isdir(os.path.join(path, "home", "Maildir")):
        return backup.Server(count, port_base, WORK)
    server = backup.Server.__new__(backup.Server)
    server.count, server.dir = count, path
    server.pop3, server.pop3s = port_base + 10, port_base + 95
    server.imap, server.imaps = port_base + 43, port_base + 93
    server.env = {"POP3_PORT": str(server.pop3), "POP3S_PORT": str(server.pop3s),
                  "IMAP_PORT": str(server.imap), "IMAPS_PORT": str(server.imaps)}
    subprocess.run([backup.SANDBOX, "start", path], env=dict(os.environ, **server.env), check=True)
    server.ca = os.path.join(path, "ca.pem")
    return server


def make_profile(server):
    profile = os.path.join(WORK, f"profile-{server.count}")
    done = os.path.join(profile, ".fetched")
    if os.path.exists(done):
        return profile
    shutil.rmtree(profile, ignore_errors=True)
    subprocess.run(["bash", PROFILE_SH, profile, str(server.pop3), "alice", "mbox", "127.0.0.1"], check=True)
    backup.log(f"Thunderbird fetches {server.count} messages into {profile}")
    subprocess.run(["bash", RUN, profile], check=True,
                   env=dict(os.environ, TB_POP3_PASSWORD="secret", TB_ACTIONS="", TB_TIMEOUT="3600"))
    open(done, "w").close()
    return profile


def first_backup(archive, config):
    out = json.loads(popvault("--archive", archive, "backup", "--json", config=config,
                              env={"POPVAULT_PASSWORD": "secret"}))
    account = out["accounts"][0]
    listed = popvault("--archive", archive, "stats", "--json")
    return account["new_messages"], account["fetched_bytes"], json.loads(listed)["unique_messages"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("count", nargs="?", type=int, default=20000)
    p.add_argument("--port-base", type=int, default=15100)
    args = p.parse_args()
    need("dovecot", "thunderbird")
    build()
    os.makedirs(WORK, exist_ok=True)
    backup.POPVAULT = os.path.join(WORK, "popvault")
    shutil.copy(common.POPVAULT, backup.POPVAULT)
    os.chmod(backup.POPVAULT, 0o755)
    server = start_server(args.count, args.port_base)
    try:
        profile = make_profile(server)
        inbox = os.path.join(profile, "Mail", "127.0.0.1", "Inbox")
        config = os.path.join(WORK, "config.toml")
        with open(config, "w") as f:
            f.write(f'[[account]]\nname = "alice"\nserver = "pop3s://alice@127.0.0.1:{server.pop3s}"\n'
                    f'ca_file = "{server.ca}"\n')
        os.chmod(config, 0o600)
        rows = []
        for label, source in (("import thunderbird:", f"thunderbird:{profile}"), ("import mbox:", f"mbox:{inbox}")):
            archive = common.fresh(os.path.join(WORK, "archive"))
            seconds, rss = measure([backup.POPVAULT, "--config", config, "--archive", archive, "import", source],
                                   env={"XDG_CACHE_HOME": os.path.join(WORK, "cache")})
            imported = json.loads(popvault("--archive", archive, "stats", "--json"))["unique_messages"]
            fetched, fetched_bytes, after = first_backup(archive, config)
            rows.append((label, seconds, rss, imported, fetched, fetched_bytes, after))
        archive = common.fresh(os.path.join(WORK, "archive"))
        fetched, fetched_bytes, after = first_backup(archive, config)
        rows.append(("no import", None, None, 0, fetched, fetched_bytes, after))
    finally:
        server.stop()
    mib = os.path.getsize(inbox) / 2**20
    print(f"## Thunderbird profile import (issue 16): {args.count:,} messages, Inbox {mib:.0f} MiB, "
          "fetched by the real Thunderbird 140 from Dovecot\n")
    print(table(["", "import time", "peak RSS", "messages after import", "first backup downloads",
                 "messages after the backup"],
                [[label, "" if s is None else f"{s:.2f} s", "" if r is None else f"{r:.0f} MB", f"{i:,}",
                  f"{n:,} messages, {b / 2**20:.1f} MiB", f"{a:,}"] for label, s, r, i, n, b, a in rows]))
    tb, mbox = rows[0], rows[1]
    print()
    print(f"- import thunderbird: / import mbox: {tb[1] / mbox[1]:.2f}x time, {tb[2] / mbox[2]:.2f}x peak RSS "
          "(thunderbird: also recovers each message's wire bytes and records its UIDL)")


if __name__ == "__main__":
    main()
