#!/usr/bin/env python3
"""Independent mbox splitter for the tests: Python's mailbox.mbox, then mboxrd unquoting.

Prints one line per message: the hex of its bytes.
"""
import mailbox
import re
import sys

QUOTED = re.compile(rb"^>(>*From )", re.M)
box = mailbox.mbox(sys.argv[1], create=False)
for key in box.keys():
    raw = box.get_bytes(key)
    print(QUOTED.sub(rb"\1", raw).hex())
