#!/usr/bin/env python3
"""Issue 12: the commands that read a whole selection (restore, export, repair, copy, status of
a copy) on a large archive,
time and peak RSS, optionally beside another popvault binary on the same archive (alternating,
so that both see the same machine).

usage: bench/readers.py COUNT [--baseline BINARY] [--runs N]
  COUNT       messages in the archive (bench/index.py's generator: one mbox, imported)
  --baseline  another popvault binary, measured on the same archive in the same run
  --runs      runs of each command per binary (default 1); the table shows the median
Prints a Markdown table for BENCHMARKS.md.
"""
import os
import sys

from common import OUT, POPVAULT, build, fresh, measure, median
from index import gen_mbox


def main():
    args = sys.argv[1:]
    baseline = None
    runs = 1
    if "--baseline" in args:
        i = args.index("--baseline")
        baseline = os.path.abspath(args[i + 1])
        del args[i:i + 2]
    if "--runs" in args:
        i = args.index("--runs")
        runs = int(args[i + 1])
        del args[i:i + 2]
    count = int(args[0]) if args else 1000000
    build()
    os.makedirs(OUT, exist_ok=True)
    mbox = gen_mbox(os.path.join(OUT, f"index-{count}.mbox"), count)
    archive = os.path.join(OUT, f"readers-archive-{count}")
    cache = os.path.join(OUT, f"readers-cache-{count}")
    if not os.path.isdir(archive):
        fresh(cache)
        measure([POPVAULT, "--archive", archive, "import", "-q", f"mbox:{mbox}"], env={"XDG_CACHE_HOME": cache})
    # The local index is built before anything is timed (a first reader builds it).
    measure([POPVAULT, "--archive", archive, "stats"], env={"XDG_CACHE_HOME": cache})
    binaries = [("this build", POPVAULT)] + ([("baseline", baseline)] if baseline else [])
    scratch = os.path.join(OUT, "readers-out")

    def commands(binary):
        mbox_out = os.path.join(scratch, "restored.mbox")
        tar_out = os.path.join(scratch, "export.tar")

        def restore_new():
            fresh(scratch)
            os.makedirs(scratch)
            return measure([binary, "--archive", archive, "restore", "-q", "--to", f"mbox:{mbox_out}"],
                           env={"XDG_CACHE_HOME": cache})

        def restore_again():
            return measure([binary, "--archive", archive, "restore", "-q", "--to", f"mbox:{mbox_out}"],
                           env={"XDG_CACHE_HOME": cache})

        def restore_year():
            fresh(scratch)
            os.makedirs(scratch)
            return measure([binary, "--archive", archive, "restore", "-q", "--since", "2015-01-01", "--until",
                            "2016-01-01", "--to", f"maildir:{os.path.join(scratch, 'Maildir')}"],
                           env={"XDG_CACHE_HOME": cache})

        def export():
            fresh(scratch)
            os.makedirs(scratch)
            return measure([binary, "--archive", archive, "export", "-q", tar_out], env={"XDG_CACHE_HOME": cache})

        def repair():
            return measure([binary, "--archive", archive, "repair", "--dry-run", "-q"], env={"XDG_CACHE_HOME": cache})

        copy_to = os.path.join(OUT, f"readers-copy-{count}")

        def copy():
            fresh(copy_to)
            return measure([binary, "--archive", archive, "copy", "-q", "--to", copy_to], env={"XDG_CACHE_HOME": cache})

        def status_copy():
            return measure([binary, "--archive", archive, "status", "--copy", copy_to], env={"XDG_CACHE_HOME": cache})

        return [("`restore --to mbox:` (every message)", restore_new),
                ("the same restore again (nothing new)", restore_again),
                ("`restore --to maildir:` of one year", restore_year),
                ("`export` to a tar (every message)", export),
                ("`repair --dry-run` (no damage)", repair),
                ("`copy --to` a new local archive", copy),
                ("`status --copy` of that copy", status_copy)]

    results = {}
    for _ in range(runs):
        for label, binary in binaries:
            for name, run in commands(binary):
                results.setdefault((name, label), []).append(run())
    fresh(scratch)
    print(f"{count:,} messages, {runs} run(s) each, alternating; /usr/bin/time wall time and peak RSS")
    print()
    print("| command | " + " | ".join(label for label, _ in binaries) + " |")
    print("|---|" + "---|" * len(binaries))
    for name, _ in commands(POPVAULT):
        cells = []
        for label, _ in binaries:
            rs = results[(name, label)]
            cells.append(f"{median([r[0] for r in rs]):.2f} s, {max(r[1] for r in rs):.0f} MB")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
