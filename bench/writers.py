#!/usr/bin/env python3
"""Issue 12: the commands that read the whole catalog (import into a fresh archive, a re-import
with nothing new, a quick verify), this build beside a baseline binary, alternating in one run.

The mbox is bench/index.py's (about 1.6 kB messages). Wall time and peak RSS, median of RUNS.

usage: bench/writers.py BASELINE [COUNT] [--runs N]   (defaults 1000000, 2)
       BASELINE: another popvault binary, e.g. built from an earlier commit
"""
import argparse
import os
import shutil

from common import OUT, POPVAULT, build, measure, median
from index import gen_mbox


def main():
    p = argparse.ArgumentParser()
    p.add_argument("baseline")
    p.add_argument("count", nargs="?", type=int, default=1000000)
    p.add_argument("--runs", type=int, default=2)
    a = p.parse_args()
    build()
    mbox = gen_mbox(os.path.join(OUT, f"index-{a.count}.mbox"), a.count)
    binaries = {"this build": POPVAULT, "baseline": a.baseline}
    rows = {}
    for run in range(a.runs):
        for name, binary in binaries.items():
            archive = os.path.join(OUT, f"writers-{name.replace(' ', '-')}")
            cache = os.path.join(OUT, f"writers-cache-{name.replace(' ', '-')}")
            shutil.rmtree(archive, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
            env = {"XDG_CACHE_HOME": cache}
            for label, args in [("import (fresh archive)", ["import", "-q", f"mbox:{mbox}"]),
                                ("re-import (nothing new)", ["import", "-q", f"mbox:{mbox}"]),
                                ("first `verify` (quick; brings the local index up to date)", ["verify", "-q"]),
                                ("`verify` (quick)", ["verify", "-q"])]:
                rows.setdefault(label, {}).setdefault(name, []).append(
                    measure([binary, "--archive", archive, *args], env=env))
            shutil.rmtree(archive)
            shutil.rmtree(cache)
    print(f"{a.count:,} messages; median of {a.runs} runs, alternating\n")
    print("| command | " + " | ".join(binaries) + " |")
    print("|---|" + "---|" * len(binaries))
    for label, by_binary in rows.items():
        cells = []
        for name in binaries:
            results = by_binary[name]
            cells.append(f"{median([r[0] for r in results]):.2f} s, {max(r[1] for r in results):.0f} MB")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
