#!/usr/bin/env python3
"""Independent IMAP reader for the tests (Python's imaplib over TLS).

usage: imap_dump.py PORT CA_FILE USER PASSWORD FOLDER
Prints one JSON object per message: {"internaldate": epoch seconds, "flags": [...], "body": hex}.
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
status, data = imap.fetch("1:*", "(INTERNALDATE FLAGS BODY.PEEK[])")
for item in data:
    if not isinstance(item, tuple):
        continue
    meta, body = item
    meta = meta.decode()
    date = imaplib.Internaldate2tuple(meta.encode())
    flags = re.search(r"FLAGS \(([^)]*)\)", meta).group(1).split()
    stamp = int(__import__("time").mktime(date))
    print(json.dumps({"internaldate": stamp, "flags": flags, "body": body.hex()}))
imap.logout()
