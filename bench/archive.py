#!/usr/bin/env python3
"""Archive benchmark (issue 2): import a generated Maildir into popvault, borg and restic.

Measures, side by side in one run and with a warm page cache for everyone: wall time and peak RSS
of the import/backup, of the full verification (`verify --full`, `borg check --verify-data`,
`restic check --read-data`), and the repository size against the raw Maildir.
usage: bench/archive.py [COUNT] [RUNS]   (defaults 20000 and 3; medians are reported)
"""
import os
import subprocess
import sys

from common import OUT, POPVAULT, build, du, fresh, maildir, measure, median, need, table


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    need("borg", "restic", "/usr/bin/time")
    build()
    src = maildir(count)
    raw = du(src)
    work = os.path.join(OUT, "archive-work")
    os.makedirs(work, exist_ok=True)
    borg_env = {"BORG_PASSPHRASE": "", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes", "BORG_BASE_DIR": os.path.join(work, "borg-home")}
    restic_env = {"RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": os.path.join(work, "restic-cache")}
    results = {name: {"ingest": [], "ingest_rss": [], "check": [], "check_rss": [], "size": 0}
               for name in ("popvault", "borg", "restic")}
    for _ in range(runs):
        # Warm the page cache identically for all three.
        subprocess.run(["tar", "cf", "/dev/null", src], check=True)

        pv = fresh(os.path.join(work, "popvault"))
        t, m = measure([POPVAULT, "--archive", pv, "-q", "import", f"maildir:{src}"])
        results["popvault"]["ingest"].append(t); results["popvault"]["ingest_rss"].append(m)
        t, m = measure([POPVAULT, "--archive", pv, "-q", "verify", "--full"])
        results["popvault"]["check"].append(t); results["popvault"]["check_rss"].append(m)
        results["popvault"]["size"] = du(pv)

        borg = fresh(os.path.join(work, "borg"))
        subprocess.run(["borg", "init", "-e", "none", borg], env=dict(os.environ, **borg_env), check=True)
        t, m = measure(["borg", "create", "--compression", "zstd,3", f"{borg}::a", src], env=borg_env)
        results["borg"]["ingest"].append(t); results["borg"]["ingest_rss"].append(m)
        t, m = measure(["borg", "check", "--verify-data", borg], env=borg_env)
        results["borg"]["check"].append(t); results["borg"]["check_rss"].append(m)
        results["borg"]["size"] = du(borg)

        restic = fresh(os.path.join(work, "restic"))
        subprocess.run(["restic", "init", "-q", "-r", restic], env=dict(os.environ, **restic_env), check=True)
        t, m = measure(["restic", "-q", "-r", restic, "backup", src], env=restic_env)
        results["restic"]["ingest"].append(t); results["restic"]["ingest_rss"].append(m)
        t, m = measure(["restic", "-q", "-r", restic, "check", "--read-data"], env=restic_env)
        results["restic"]["check"].append(t); results["restic"]["check_rss"].append(m)
        results["restic"]["size"] = du(restic)

    mb = raw / 1e6
    rows = []
    for name, r in results.items():
        ingest, check = median(r["ingest"]), median(r["check"])
        rows.append([name, f"{ingest:.2f} s", f"{count / ingest:,.0f} msg/s", f"{mb / ingest:.0f} MB/s",
                     f"{max(r['ingest_rss']):.0f} MB", f"{check:.2f} s", f"{mb / check:.0f} MB/s",
                     f"{r['size'] / 1e6:.1f} MB", f"{r['size'] / raw:.3f}"])
    pv, borg = results["popvault"], results["borg"]
    print(f"## Archive: {count:,} generated messages, {mb:.1f} MB raw Maildir (median of {runs} runs)\n")
    print(table(["tool", "import/backup", "messages/s", "MB/s", "peak RSS", "full check", "check MB/s",
                 "repository", "size/raw"], rows))
    print(f"\nRatios: popvault import is {median(borg['ingest']) / median(pv['ingest']):.2f}x borg create, "
          f"{median(results['restic']['ingest']) / median(pv['ingest']):.2f}x restic backup; "
          f"verify --full is {median(borg['check']) / median(pv['check']):.2f}x borg check --verify-data, "
          f"{median(results['restic']['check']) / median(pv['check']):.2f}x restic check --read-data.")


if __name__ == "__main__":
    main()
