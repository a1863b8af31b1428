#!/usr/bin/env python3
"""Generates a deterministic Maildir of COUNT messages for the benchmarks.

A mix like a real mailbox: ~88% text mails of 1-20 kB, ~12% with a base64 attachment of
30-900 kB (random bytes, so incompressible once decoded). CRLF line endings, as POP3 serves them.
usage: gen_maildir.py DIR COUNT [SEED]
"""
import base64
import os
import random
import sys

WORDS = ("the of and to in is you that it he was for on are as with his they at be this have "
         "from or one had by word but not what all were we when your can said there use an each "
         "which she do how their if will up other about out many then them these so some her would "
         "make like him into time has look two more write go see number no way could people my than "
         "first water been call who oil its now find long down day did get come made may part "
         "backup mailbox server message restore archive invoice meeting tomorrow project report").split()


def text_body(rng, size):
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        if rng.random() < 0.02:
            line = "." + line  # exercises dot-stuffing
        lines.append(line)
        total += len(line) + 2
    return "\r\n".join(lines) + "\r\n"


def message(rng, n):
    headers = (
        f"Return-Path: <sender{n % 97}@example.org>\r\n"
        f"Received: from mx.example.org by mail.example.com; Mon, {1 + n % 28} Jan 2024 10:{n % 60:02d}:00 +0000\r\n"
        f"From: Sender {n % 97} <sender{n % 97}@example.org>\r\n"
        f"To: alice@example.com\r\n"
        f"Subject: {' '.join(rng.choice(WORDS) for _ in range(5))} #{n}\r\n"
        f"Date: Mon, {1 + n % 28} Jan 2024 10:{n % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{n}.{rng.getrandbits(48):x}@bench.example>\r\n"
        "MIME-Version: 1.0\r\n"
    )
    if rng.random() < 0.12:
        blob = rng.randbytes(rng.randint(30_000, 900_000))
        b64 = base64.encodebytes(blob).decode().replace("\n", "\r\n")
        return (headers + 'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
                "--b1\r\nContent-Type: text/plain\r\n\r\n" + text_body(rng, rng.randint(300, 3000)) +
                '--b1\r\nContent-Type: application/octet-stream; name="f.bin"\r\n'
                "Content-Transfer-Encoding: base64\r\n\r\n" + b64 + "--b1--\r\n")
    return headers + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text_body(rng, rng.randint(1000, 20000))


def main():
    out, count = sys.argv[1], int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 42)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    for n in range(count):
        with open(os.path.join(out, "cur", f"{1700000000 + n}.M{n}P1.bench:2,S"), "wb") as f:
            f.write(message(rng, n).encode())


if __name__ == "__main__":
    main()
