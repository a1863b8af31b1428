#!/usr/bin/env python3
"""Issue 12: a million messages. Every command's time and peak RSS on archives of 10,000,
100,000 and 1,000,000 small messages (about 2 kB, dated over 20 years, imported from one mbox),
and search against notmuch on the same mail.

usage: bench/index.py [SIZES...] [--notmuch N]
  SIZES       message counts (default 10000 100000 1000000)
  --notmuch N notmuch gets the N-message mailbox as a Maildir (default 100000; 0: skip)
Prints Markdown tables for BENCHMARKS.md.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import time

from common import OUT, POPVAULT, build, du, fresh, measure, median

WORDS = ("the of and to in is you that it he was for on are as with his they at be this have "
         "from or one had by word but not what all were we when your can said there use an each "
         "which she do how their if will up other about out many then them these so some her would "
         "make like him into time has look two more write go see number no way could people my than "
         "first water been call who oil its now find long down day did get come made may part "
         "backup mailbox server message restore archive meeting tomorrow project report").split()
# Rarer words, one in a few hundred messages each: what a user searches for.
RARE = ["invoice", "plumber", "mortgage", "dentist", "passport", "kindergarten", "warranty",
        "boiler", "lawyer", "insurance", "vaccination", "tax", "landlord", "wedding", "funeral"]
MONTH = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
DAY = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
START = 1104537600  # 2005-01-01
SPAN = 20 * 365 * 86400


def gen_mbox(path, count, seed=12):
    """An mbox of `count` messages of about 2 kB, dated uniformly over 2005-2024."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        return path
    rng = random.Random(seed)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="\n") as f:
        for n in range(count):
            t = time.gmtime(START + rng.randrange(SPAN))
            date = f"{DAY[t.tm_wday]}, {t.tm_mday} {MONTH[t.tm_mon - 1]} {t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
            asctime = time.strftime("%a %b %d %H:%M:%S %Y", t)
            words = [rng.choice(WORDS) for _ in range(300)]
            if rng.random() < 0.3:
                words[rng.randrange(300)] = rng.choice(RARE)
            body = "\n".join(" ".join(words[i:i + 12]) for i in range(0, 300, 12))
            sender = rng.randrange(500)
            f.write(f"From sender{sender}@example.org {asctime}\n"
                    f"From: Sender {sender} <sender{sender}@example.org>\n"
                    f"To: alice@example.com\n"
                    f"Subject: {' '.join(rng.choice(WORDS) for _ in range(5))} #{n}\n"
                    f"Date: {date}\n"
                    f"Message-ID: <{n}.{seed}@bench.example>\n\n"
                    f"{body}\n\n")
    os.rename(tmp, path)
    return path


def maildir_of(mbox, path):
    """The same messages as a Maildir (for notmuch)."""
    if os.path.isdir(os.path.join(path, "cur")):
        return path
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    n = 0
    message = []
    with open(mbox, "rb") as f:
        for line in f:
            if line.startswith(b"From ") and (not message or message[-1] == b"\n"):
                if message:
                    with open(os.path.join(path, "cur", f"{n:08d}.bench:2,S"), "wb") as out:
                        out.writelines(message[:-1])
                    n += 1
                message = []
                continue
            message.append(line)
    if message:
        with open(os.path.join(path, "cur", f"{n:08d}.bench:2,S"), "wb") as out:
            out.writelines(message[:-1])
    return path


def popvault(archive, cache, *args):
    return measure([POPVAULT, "--archive", archive, *args], env={"XDG_CACHE_HOME": cache})


def output(archive, cache, *args):
    return subprocess.run([POPVAULT, "--archive", archive, *args], env=dict(os.environ, XDG_CACHE_HOME=cache),
                          capture_output=True, check=True, text=True).stdout


def runs(fn, times=5):
    results = [fn() for _ in range(times)]
    return median([r[0] for r in results]), max(r[1] for r in results)


def bench_size(count):
    mbox = gen_mbox(os.path.join(OUT, f"index-{count}.mbox"), count)
    archive = fresh(os.path.join(OUT, f"index-archive-{count}"))
    cache = fresh(os.path.join(OUT, f"index-cache-{count}"))
    rows = {}
    rows["import (catalog index built as it commits)"] = popvault(archive, cache, "import", "-q", f"mbox:{mbox}")
    rows["re-import (nothing new)"] = popvault(archive, cache, "import", "-q", f"mbox:{mbox}")
    ids = [json.loads(l)["id"] for l in output(archive, cache, "list", "--json", "--since", "2015-06-01", "--until", "2015-06-03").splitlines()]
    some = ids[0] if ids else json.loads(output(archive, cache, "list", "--json").splitlines()[0])["id"]
    rows["`cat ID`"] = runs(lambda: popvault(archive, cache, "cat", some[:12]))
    rows["`list --since` one month"] = runs(lambda: popvault(archive, cache, "list", "--since", "2015-06-01", "--until", "2015-07-01"), 3)
    rows["`list --subject`"] = runs(lambda: popvault(archive, cache, "list", "--subject", "tomorrow backup"), 3)
    rows["`stats`"] = runs(lambda: popvault(archive, cache, "stats"), 3)
    rows["`status`"] = runs(lambda: popvault(archive, cache, "status"), 3)
    rows["`verify` (quick)"] = runs(lambda: popvault(archive, cache, "verify", "-q"), 3)
    start = time.time()
    rows["first `search` (indexes the text)"] = popvault(archive, cache, "search", "plumber", "--limit", "10")
    text_seconds = time.time() - start
    rows["`search plumber` (a word in 2% of messages, newest 100)"] = runs(lambda: popvault(archive, cache, "search", "plumber"))
    rows["`search '\"mailbox server\"' kindergarten`"] = runs(lambda: popvault(archive, cache, "search", '"mailbox server"', "kindergarten"))
    # Dropped and rebuilt from the catalog alone (what a lost cache costs).
    shutil.rmtree(cache)
    rows["index rebuilt from nothing (`stats`)"] = popvault(archive, cache, "stats")
    stats = json.loads(output(archive, cache, "stats", "--json"))
    return rows, {"count": count, "index_bytes": stats["index_bytes"], "raw_bytes": stats["raw_bytes"],
                  "stored_bytes": stats["stored_bytes"], "text_per_second": count / text_seconds}


def notmuch(count):
    mbox = gen_mbox(os.path.join(OUT, f"index-{count}.mbox"), count)
    mail = maildir_of(mbox, os.path.join(OUT, f"index-maildir-{count}"))
    home = fresh(os.path.join(OUT, "notmuch-home"))
    os.makedirs(home)
    shutil.rmtree(os.path.join(mail, ".notmuch"), ignore_errors=True)
    config = os.path.join(home, "notmuch-config")
    with open(config, "w") as f:
        f.write(f"[database]\npath={mail}\n[user]\nname=a\nprimary_email=alice@example.com\n[new]\ntags=\n[search]\nexclude_tags=\n")
    env = {"NOTMUCH_CONFIG": config, "HOME": home}
    index = measure(["notmuch", "new", "--quiet"], env=env)
    search = runs(lambda: measure(["notmuch", "search", "--output=files", "--limit=100", "--sort=newest-first", "plumber"], env=env))
    phrase = runs(lambda: measure(["notmuch", "search", "--output=files", "--limit=100", '"mailbox server" and kindergarten'], env=env))
    return {"index": index, "search": search, "phrase": phrase, "bytes": du(os.path.join(mail, ".notmuch")),
            "per_second": count / index[0]}


def main():
    args = sys.argv[1:]
    notmuch_count = 100000
    if "--notmuch" in args:
        i = args.index("--notmuch")
        notmuch_count = int(args[i + 1])
        del args[i:i + 2]
    sizes = [int(a) for a in args] or [10000, 100000, 1000000]
    if sizes == [0]:  # notmuch alone, beside a popvault run on the same size
        sizes = [notmuch_count]
    build()
    os.makedirs(OUT, exist_ok=True)
    results = [bench_size(n) for n in sizes]
    print(f"| command | " + " | ".join(f"{r[1]['count']:,} messages" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for name in results[0][0]:
        cells = [f"{r[0][name][0]:.3f} s, {r[0][name][1]:.0f} MB" for r in results]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for _, info in results:
        print(f"- {info['count']:,} messages: raw {info['raw_bytes'] / 1e6:.0f} MB, packs {info['stored_bytes'] / 1e6:.0f} MB, "
              f"local index {info['index_bytes'] / 1e6:.0f} MB; text indexed at {info['text_per_second']:,.0f} messages/s")
    if notmuch_count and shutil.which("notmuch"):
        n = notmuch(notmuch_count)
        mine = next((r for r in results if r[1]["count"] == notmuch_count), None)
        print()
        print(f"notmuch on the same {notmuch_count:,} messages (as a Maildir):")
        print(f"- `notmuch new`: {n['index'][0]:.1f} s ({n['per_second']:,.0f} messages/s), {n['index'][1]:.0f} MB; database {n['bytes'] / 1e6:.0f} MB")
        print(f"- `notmuch search plumber` (newest 100): {n['search'][0]:.3f} s, {n['search'][1]:.0f} MB")
        print(f"- `notmuch search '\"mailbox server\" and kindergarten'`: {n['phrase'][0]:.3f} s, {n['phrase'][1]:.0f} MB")
        if mine:
            r, info = mine
            print(f"- popvault, same mail: text indexing {info['text_per_second']:,.0f} messages/s, index {info['index_bytes'] / 1e6:.0f} MB, "
                  f"search {r['`search plumber` (a word in 2% of messages, newest 100)'][0]:.3f} s "
                  f"({n['search'][0] / r['`search plumber` (a word in 2% of messages, newest 100)'][0]:.1f}x faster than notmuch)")


if __name__ == "__main__":
    main()
