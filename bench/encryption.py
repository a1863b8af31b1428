#!/usr/bin/env python3
"""Encryption benchmark (issue 14): popvault plain against popvault encrypted (age), and against
restic and borg (`--encryption repokey-blake2`), which both encrypt, in one run.

Steps, for the generated COUNT-message Maildir: import (restic backup, borg create), a POP3
backup of the same mailbox from a throwaway Dovecot (popvault only: restic and borg have no POP3),
the full check (`verify --full` with the identity, `restic check --read-data`,
`borg check --verify-data`), and a restore into a Maildir (`restic restore`, `borg extract`,
each followed by `sync`, as popvault's restore ends with its files on disk).
Also `verify --full` without the identity (the ciphertext against its names only).
usage: bench/encryption.py [COUNT] [RUNS]   (defaults 20000 and 1; medians are reported)
"""
import os
import shutil
import subprocess
import sys

import backup
from common import OUT, POPVAULT, build, du, fresh, maildir, measure, median, need, table

WORK = os.path.join(OUT, "encryption-work")


def popvault_steps(src, server, encrypted, home):
    env = {"HOME": home, "XDG_CACHE_HOME": os.path.join(home, "cache"),
           "XDG_CONFIG_HOME": os.path.join(home, "config"), "POPVAULT_PASSWORD": "secret"}
    identity = os.path.join(home, "key.txt")
    tag = "enc" if encrypted else "plain"
    archive, pulled = os.path.join(WORK, f"pv-{tag}"), os.path.join(WORK, f"pv-{tag}-pop3")
    out = {}
    for path in (archive, pulled):
        fresh(path)
        if encrypted:
            recipient = subprocess.run(["age-keygen", "-y", identity], capture_output=True, check=True,
                                       text=True).stdout.strip()
            subprocess.run([POPVAULT, "--archive", path, "-q", "init", "--encrypt", "--recipient", recipient],
                           env=dict(os.environ, **env), check=True)
    reader = ["--identity", identity] if encrypted else []
    out["import"] = measure([POPVAULT, "--archive", archive, "-q", "import", f"maildir:{src}"], env=env)
    out["backup"] = measure([POPVAULT, "--archive", pulled, "-q", "backup",
                             f"pop3://alice@127.0.0.1:{server.pop3}", "--ca-file", server.ca], env=env)
    out["verify"] = measure([POPVAULT, "--archive", archive, "-q"] + reader + ["verify", "--full"], env=env)
    if encrypted:
        out["verify_nokey"] = measure([POPVAULT, "--archive", archive, "-q", "verify", "--full"], env=env)
    target = fresh(os.path.join(WORK, f"restored-{tag}"))
    out["restore"] = measure([POPVAULT, "--archive", archive, "-q"] + reader
                             + ["restore", "--to", f"maildir:{target}"], env=env)
    out["size"] = du(archive)
    return out


def restic_steps(src):
    env = {"RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": os.path.join(WORK, "restic-cache")}
    repo = fresh(os.path.join(WORK, "restic"))
    subprocess.run(["restic", "init", "-q", "-r", repo], env=dict(os.environ, **env), check=True)
    out = {"import": measure(["restic", "-q", "-r", repo, "backup", src], env=env),
           "verify": measure(["restic", "-q", "-r", repo, "check", "--read-data"], env=env)}
    target = fresh(os.path.join(WORK, "restored-restic"))
    # popvault's restore ends with its files on disk (syncfs); the peers' are followed by `sync`.
    out["restore"] = measure(["sh", "-c", f"restic -q -r '{repo}' restore latest --target '{target}' && sync"],
                             env=env)
    out["size"] = du(repo)
    return out


def borg_steps(src):
    env = {"BORG_PASSPHRASE": "bench", "BORG_BASE_DIR": os.path.join(WORK, "borg-home"),
           "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
    repo = fresh(os.path.join(WORK, "borg"))
    subprocess.run(["borg", "init", "--encryption", "repokey-blake2", repo], env=dict(os.environ, **env), check=True)
    out = {"import": measure(["borg", "create", "--compression", "zstd,3", f"{repo}::a", src], env=env),
           "verify": measure(["borg", "check", "--verify-data", repo], env=env)}
    target = fresh(os.path.join(WORK, "restored-borg"))
    os.makedirs(target)
    out["restore"] = measure(["sh", "-c", f"borg extract '{repo}::a' && sync"], env=env, cwd=target)
    out["size"] = du(repo)
    return out


def cell(r, step):
    if step not in r:
        return "-"
    t, m = r[step]
    return f"{t:.2f} s ({m:.0f} MB)"


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    need("restic", "borg", "age-keygen", "/usr/bin/time", "/usr/sbin/dovecot")
    build()
    src = maildir(count)
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    home = os.path.join(WORK, "home")
    os.makedirs(home)
    subprocess.run(["age-keygen", "-o", os.path.join(home, "key.txt")], check=True, capture_output=True)
    server = backup.Server(count, 21000, WORK)
    results = {}
    try:
        for _ in range(runs):
            subprocess.run(["tar", "cf", "/dev/null", src], check=True)  # a warm page cache for all
            for name, steps in (("popvault", lambda: popvault_steps(src, server, False, home)),
                                ("popvault encrypted", lambda: popvault_steps(src, server, True, home)),
                                ("restic", lambda: restic_steps(src)),
                                ("borg repokey-blake2", lambda: borg_steps(src))):
                results.setdefault(name, []).append(steps())
    finally:
        server.stop()
    med = {}
    for name, rs in results.items():
        med[name] = {k: (median([r[k][0] for r in rs]), max(r[k][1] for r in rs))
                     for k in rs[0] if k != "size"}
        med[name]["size"] = rs[-1]["size"]
    mb = du(src) / 1e6
    print(f"## Encryption: {count:,} generated messages, {mb:.1f} MB Maildir (median of {runs} runs)\n")
    rows = [[name, cell(r, "import"), cell(r, "backup"), cell(r, "verify"), cell(r, "verify_nokey"),
             cell(r, "restore"), f"{r['size'] / 1e6:.1f} MB"] for name, r in med.items()]
    print(table(["tool", "import/backup Maildir", "POP3 backup", "full check", "full check, no key",
                 "restore to Maildir", "repository"], rows))
    plain, enc = med["popvault"], med["popvault encrypted"]
    print()
    for step in ("import", "backup", "verify", "restore"):
        line = f"- {step}: encrypted/plain {enc[step][0] / plain[step][0]:.2f}x"
        for peer in ("restic", "borg repokey-blake2"):
            if step in med[peer]:
                line += f"; {peer} is {med[peer][step][0] / enc[step][0]:.2f}x encrypted popvault"
        print(line)


if __name__ == "__main__":
    main()
