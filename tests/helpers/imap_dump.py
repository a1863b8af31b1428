#!/usr/bin/env python3
"""Independent IMAP reader for the tests (Python's imaplib over TLS).

usage: imap_dump.py PORT CA_FILE USER PASSWORD FOLDER
Prints one JSON object per message: {"internaldate": epoch seconds, "flags": [...], "body": hex,
"binary": hex}. `body` is BODY.PEEK[] (a server shows NUL as 0x80 there, and re-encodes parts
whose transfer encoding is binary); `binary` is BINARY.PEEK[] (RFC 3516), where the server
offers it: content transfer encodings undone, NUL as NUL.
"""
import email.utils
import imaplib
import json
import re
import ssl
import sys

port, ca, user, password, folder = sys.argv[1:6]
context = ssl.create_default_context(cafile=ca)
imap = imaplib.IMAP4_SSL("127.0.0.1", int(port), ssl_context=context)
imap.login(user, password)
status, _ = imap.select('"%s"' % folder, readonly=True)
if status != "OK":
    sys.exit(f"cannot select {folder}")
# Servers announce more after login; imaplib keeps the greeting's list.
binary = "BINARY" in imap.capability()[1][0].decode().upper().split()
status, data = imap.fetch("1:*", "(INTERNALDATE FLAGS BODY.PEEK[])")
bodies = [item for item in data if isinstance(item, tuple)]
binaries = []
for n in range(1, len(bodies) + 1 if binary else 1):
    # One at a time: a server refuses BINARY for a part it cannot decode ([UNKNOWN-CTE]).
    try:
        status, data = imap.fetch(str(n), "(BINARY.PEEK[])")
    except imaplib.IMAP4.abort:
        break
    except imaplib.IMAP4.error:
        status, data = "NO", []
    items = [item[1] for item in data if isinstance(item, tuple)] if status == "OK" else []
    binaries.append(items[0] if items else b"")
binaries += [b""] * (len(bodies) - len(binaries))
for (meta, body), raw in zip(bodies, binaries):
    meta = meta.decode()
    date = imaplib.Internaldate2tuple(meta.encode())
    flags = re.search(r"FLAGS \(([^)]*)\)", meta).group(1).split()
    stamp = int(__import__("time").mktime(date))
    print(json.dumps({"internaldate": stamp, "flags": flags, "body": body.hex(), "binary": raw.hex()}))
try:
    imap.logout()
except imaplib.IMAP4.abort:
    pass
