#!/usr/bin/env python3
"""Object storage benchmark (issue 13), in one run against one moto S3 server on 127.0.0.1.

On the generated COUNT-message mailbox (a Dovecot sandbox serves it over POP3 with STLS):
  popvault backup -> s3://          (its mirror in a fresh cache directory)
  popvault backup -> local archive  (the same backup, for the cost of the upload)
  popvault import of the served Maildir -> s3://  (restic's very input, no POP3)
  restic backup of the same Maildir -> the same moto (restic speaks S3)
then the nothing-new backup into s3:// (time and requests, after a small archive and after the
large one: the count must not grow with the archive), a nothing-new backup on a machine whose
mirror is gone (the first command there copies the archive down), and `copy` of the local
archive into a second s3:// archive. Requests are popvault's own count
(POPVAULT_REPORT_REQUESTS=1), each retry counted.

usage: bench/s3.py [COUNT] [--small N] [--port-base P]    (defaults 20000, 2000, 13100)
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import backup
import common
from common import OUT, build, maildir, need, table


def log(msg):
    print(f"[s3.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    def __init__(self, work):
        self.port = free_port()
        self.log = open(os.path.join(work, "moto.log"), "w")
        self.proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint(), timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("bench: moto_server did not start")
                time.sleep(0.2)

    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def run_timed(argv, env):
    """(seconds, peak RSS MB, stderr) of a run that must succeed."""
    fd, report = tempfile.mkstemp()
    os.close(fd)
    proc = subprocess.run(["/usr/bin/time", "-o", report, "-f", "%e %M"] + argv, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with open(report) as f:
        seconds, rss = f.read().split()[-2:]
    os.unlink(report)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return float(seconds), int(rss) / 1024, proc.stderr


def requests(stderr, archive):
    m = re.search(re.escape(archive) + r": (\d+) requests", stderr)
    if not m:
        sys.exit(f"bench: no request count for {archive} in: {stderr[-500:]}")
    return int(m.group(1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("count", nargs="?", type=int, default=20000)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--port-base", type=int, default=13100)
    args = parser.parse_args()
    need("restic", "moto_server", "/usr/bin/time")
    build()
    pv = common.POPVAULT
    work = tempfile.mkdtemp(prefix="pv-s3-bench-", dir=OUT)
    os.chmod(work, 0o755)  # the sandbox's Dovecot runs as nobody when we are root
    moto = Moto(work)
    base_env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
                    AWS_REGION="us-east-1", AWS_ENDPOINT_URL=moto.endpoint(), HOME=work,
                    POPVAULT_PASSWORD="secret", POPVAULT_REPORT_REQUESTS="1")
    rows = []
    nothing_new = {}
    servers = []
    try:
        for count in (args.small, args.count):
            server = backup.Server(count, args.port_base + (0 if count == args.small else 200), work)
            servers.append(server)
            url = f"pop3://alice@127.0.0.1:{server.pop3}"
            s3_archive = f"s3://bench-{count}/popvault"
            env = dict(base_env, XDG_CACHE_HOME=os.path.join(work, f"cache-{count}"))
            log(f"{count}: popvault backup into {s3_archive}")
            t_s3, m_s3, err = run_timed([pv, "--archive", s3_archive, "-q", "backup", url, "--ca-file", server.ca], env)
            full_requests = requests(err, s3_archive)
            log(f"{count}: nothing-new backup into {s3_archive}")
            t_nn, m_nn, err = run_timed([pv, "--archive", s3_archive, "-q", "backup", url, "--ca-file", server.ca], env)
            nothing_new[count] = (t_nn, m_nn, requests(err, s3_archive))
            if count != args.count:
                continue
            local = os.path.join(work, "local-archive")
            log(f"{count}: popvault backup into a local archive")
            t_local, m_local, _ = run_timed([pv, "--archive", local, "-q", "backup", url, "--ca-file", server.ca],
                                            dict(base_env, XDG_CACHE_HOME=os.path.join(work, "cache-local")))
            log(f"{count}: restic backup of the same Maildir into the same moto")
            restic_env = dict(base_env, RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=os.path.join(work, "restic-cache"))
            repo = f"s3:{moto.endpoint()}/bench-restic/restic"
            subprocess.run(["restic", "-q", "-r", repo, "init"], env=restic_env, check=True,
                           stdout=subprocess.DEVNULL)
            t_restic, m_restic, _ = run_timed(["restic", "-q", "-r", repo, "backup", maildir(count)], restic_env)
            log(f"{count}: popvault import of the same Maildir into s3:// (restic's input)")
            import_target = f"s3://bench-import-{count}/popvault"
            t_import, m_import, err = run_timed([pv, "--archive", import_target, "-q", "import", f"maildir:{maildir(count)}"],
                                                dict(base_env, XDG_CACHE_HOME=os.path.join(work, "cache-import")))
            import_requests = requests(err, import_target)
            log(f"{count}: a new machine's first command (copies the archive down), then nothing new")
            fresh_env = dict(base_env, XDG_CACHE_HOME=os.path.join(work, "cache-fresh"))
            t_pull, m_pull, err = run_timed([pv, "--archive", s3_archive, "-q", "verify"], fresh_env)
            pull_requests = requests(err, s3_archive)
            log(f"{count}: copy local -> s3")
            copy_target = f"s3://bench-copy-{count}/popvault"
            t_copy, m_copy, err = run_timed([pv, "--archive", local, "-q", "copy", "--to", copy_target],
                                            dict(base_env, XDG_CACHE_HOME=os.path.join(work, "cache-copy")))
            copy_requests = requests(err, copy_target)
            t_copy2, _, err = run_timed([pv, "--archive", local, "-q", "copy", "--to", copy_target],
                                        dict(base_env, XDG_CACHE_HOME=os.path.join(work, "cache-copy")))
            copy2_requests = requests(err, copy_target)
            rows = [
                ["popvault backup (POP3) -> s3://", f"{t_s3:.1f} s", f"{m_s3:.0f} MB", full_requests],
                ["popvault backup (POP3) -> local archive", f"{t_local:.1f} s", f"{m_local:.0f} MB", "-"],
                ["popvault import (the same Maildir) -> s3://", f"{t_import:.1f} s", f"{m_import:.0f} MB", import_requests],
                ["restic backup (the same Maildir) -> same moto", f"{t_restic:.1f} s", f"{m_restic:.0f} MB", "-"],
                [f"popvault nothing-new backup, {args.small}-message archive",
                 f"{nothing_new[args.small][0]:.2f} s", f"{nothing_new[args.small][1]:.0f} MB", nothing_new[args.small][2]],
                [f"popvault nothing-new backup, {count}-message archive",
                 f"{nothing_new[count][0]:.2f} s", f"{nothing_new[count][1]:.0f} MB", nothing_new[count][2]],
                ["first command on a new machine (verify: copies it all down)", f"{t_pull:.1f} s", f"{m_pull:.0f} MB", pull_requests],
                ["popvault copy local -> new s3://", f"{t_copy:.1f} s", f"{m_copy:.0f} MB", copy_requests],
                ["popvault copy again (nothing to copy)", f"{t_copy2:.2f} s", "-", copy2_requests],
            ]
            print(f"S3 (moto {moto.endpoint()}), {count} messages; one run each.\n")
            print(table(["run", "wall", "peak RSS", "requests"], rows))
            print(f"\nimport of the Maildir to S3 / restic of it to S3: {t_import / t_restic:.2f}x the time; "
                  f"backup (POP3) to S3 / restic to S3: {t_s3 / t_restic:.2f}x; "
                  f"backup to S3 / backup to local: {t_s3 / t_local:.2f}x.")
    finally:
        for server in servers:
            server.stop()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
