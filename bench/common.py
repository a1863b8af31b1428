"""Shared helpers of the benchmark scripts: timing with peak RSS, medians, tables."""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
POPVAULT = os.path.join(ROOT, "target", "release", "popvault")


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)


def need(*commands):
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        sys.exit(f"bench: missing {' '.join(missing)} (apt-get install borgbackup restic mpop getmail6 fetchmail isync hyperfine time)")


def measure(argv, env=None, cwd=None, stdin=None):
    """Runs argv under /usr/bin/time; returns (seconds, peak RSS in MB)."""
    fd, report = tempfile.mkstemp()
    os.close(fd)
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(["/usr/bin/time", "-o", report, "-f", "%e %M"] + argv, env=full_env, cwd=cwd,
                          stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open(report) as f:
        seconds, rss_kb = f.read().split()[-2:]
    os.unlink(report)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return float(seconds), int(rss_kb) / 1024


def du(path):
    out = subprocess.run(["du", "-sb", path], capture_output=True, check=True).stdout
    return int(out.split()[0])


def median(values):
    return statistics.median(values)


def maildir(count):
    """The generated Maildir of `count` messages, made once and reused."""
    path = os.path.join(OUT, f"maildir-{count}")
    if not os.path.isdir(os.path.join(path, "cur")) or len(os.listdir(os.path.join(path, "cur"))) != count:
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([sys.executable, os.path.join(HERE, "gen_maildir.py"), path, str(count)], check=True)
    return path


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    return path


def table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
