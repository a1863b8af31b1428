#!/usr/bin/env python3
"""Independent reader of a message's words, for the search tests (Python's email package).

usage: mail_words.py FILE...
Prints one JSON object per file: {"file": path, "plain": [words], "all": [words]}.
`plain` holds the lower-cased words of the Subject, the address fields (From, To, Cc,
Reply-To, Sender) and every text/plain part that decodes cleanly (transfer encoding and a known
charset): what any reader must find. A message whose header block Python finds broken has no
`plain` words (readers may fairly disagree on where its body starts). `all` adds the text of
HTML parts (tags, scripts and styles dropped), attachments' file names, other text/* parts,
every part's header values and the words of the raw bytes: what a message may be found by,
and nothing it could not be. A word is a run of letters and digits, as SQLite's unicode61
tokenizer reads it.
"""
import email
import email.errors
import email.policy
import html
import json
import re
import sys

WORD = re.compile(r"[^\W_]+")
ADDRESS_FIELDS = ["From", "To", "Cc", "Reply-To", "Sender"]


def words(text):
    return {w.lower() for w in WORD.findall(text or "")}


def part_text(part):
    try:
        return part.get_content()
    except Exception:
        payload = part.get_payload(decode=True) or b""
        try:
            return payload.decode(part.get_content_charset() or "utf-8", "replace")
        except LookupError:
            return payload.decode("utf-8", "replace")


def html_text(source):
    source = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", source)
    source = re.sub(r"(?s)<!--.*?-->", " ", source)
    return html.unescape(re.sub(r"(?s)<[^>]*>", " ", source))


def header(msg, name):
    try:
        return "\n".join(str(v) for v in msg.get_all(name) or [])
    except Exception:
        return ""


HEADER_DEFECTS = (
    email.errors.MissingHeaderBodySeparatorDefect,
    email.errors.InvalidHeaderDefect,
    email.errors.StartBoundaryNotFoundDefect,
    email.errors.CloseBoundaryNotFoundDefect,
    email.errors.MultipartInvariantViolationDefect,
)


def clean_text(part):
    """The decoded text of a part, or None when its decoding is doubtful."""
    if part.get_content_charset() not in (None, "us-ascii", "utf-8", "iso-8859-1", "windows-1252"):
        return None
    try:
        text = part.get_content()
    except Exception:
        return None
    if "\ufffd" in text or part.defects:
        return None
    return text


def read(path):
    with open(path, "rb") as f:
        raw = f.read()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    plain, every = set(), set()
    every |= words(raw.decode("latin-1"))
    every |= words(raw.decode("utf-8", "replace"))
    broken = any(isinstance(d, HEADER_DEFECTS) for d in msg.defects)
    plain |= words(header(msg, "Subject"))
    for name in ADDRESS_FIELDS:
        plain |= words(header(msg, name))
    for part in msg.walk():
        for name in part.keys():
            every |= words(header(part, name))
        broken = broken or any(isinstance(d, HEADER_DEFECTS) for d in part.defects)
        if part.is_multipart():
            continue
        name = part.get_filename()
        if name:
            every |= words(name)
        ctype = part.get_content_type()
        if part.get_content_disposition() == "attachment":
            continue
        if ctype == "text/plain":
            text = clean_text(part)
            if text is not None:
                plain |= words(text)
            every |= words(part_text(part))
        elif ctype == "text/html":
            every |= words(html_text(part_text(part)))
        elif ctype.startswith("text/") or ctype.startswith("message/"):
            every |= words(part_text(part))
    if broken:
        plain = set()
    return {"plain": sorted(plain), "all": sorted(every | plain)}


for path in sys.argv[1:]:
    try:
        found = read(path)
    except Exception as e:  # a reader's failure is its own: nothing is required of that file
        with open(path, "rb") as f:
            raw = f.read()
        every = words(raw.decode("latin-1")) | words(raw.decode("utf-8", "replace"))
        found = {"plain": [], "all": sorted(every), "error": str(e)}
    found["file"] = path
    print(json.dumps(found))
