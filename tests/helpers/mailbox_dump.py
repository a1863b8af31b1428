#!/usr/bin/env python3
"""Independent Maildir/mbox reader for the tests (Python's mailbox module).

usage: mailbox_dump.py maildir DIR | mbox FILE
Prints one JSON object per message: {"body": hex, "flags": "...", "mtime": seconds or null}.
mbox bodies are mboxrd-unquoted (one '>' removed from '>+From ' lines).
"""
import json
import mailbox
import os
import re
import sys

kind, path = sys.argv[1], sys.argv[2]
QUOTED = re.compile(rb"^>(>*From )", re.M)
if kind == "maildir":
    box = mailbox.Maildir(path, factory=None, create=False)
    for key in box.keys():
        msg = box.get_message(key)
        full = os.path.join(path, box._lookup(key))
        body = box.get_bytes(key)
        print(json.dumps({"body": body.hex(), "flags": msg.get_flags(), "mtime": int(os.stat(full).st_mtime)}))
else:
    box = mailbox.mbox(path, create=False)
    for key in box.keys():
        body = QUOTED.sub(rb"\1", box.get_bytes(key))
        print(json.dumps({"body": body.hex(), "flags": "", "mtime": None, "from_line": box.get_message(key).get_from()}))
