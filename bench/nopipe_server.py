#!/usr/bin/env python3
"""A POP3 server without PIPELINING, for the benchmark: it serves the files of a Maildir (CRLF,
as Dovecot serves them) over plain TCP, one command at a time, and writes every reply as its
status line, its body and its terminator in three separate writes on a socket without
TCP_NODELAY, as simple servers do. Against such a server a client that delays its ACKs waits
about 40 ms per message (Nagle's algorithm holds the terminator until the body is ACKed).

usage: bench/nopipe_server.py MAILDIR PORT       (prints "ready" once listening)
User and password are not checked. Nothing is ever deleted (DELE is acknowledged only).
"""
import os
import socket
import sys
import threading


def load(maildir):
    names = []
    for sub in ("cur", "new"):
        d = os.path.join(maildir, sub)
        if os.path.isdir(d):
            names += [os.path.join(d, n) for n in os.listdir(d)]
    names.sort()
    return names


def stuffed(data):
    """Dot-stuffed body with a final CRLF (RFC 1939 §3), without the terminator."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def serve(conn, files, sizes):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    reader = conn.makefile("rb")
    conn.sendall(b"+OK nopipe ready\r\n")
    while True:
        line = reader.readline()
        if not line:
            return
        words = line.strip().split()
        verb = words[0].upper() if words else b""
        arg = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
        if verb == b"CAPA":
            conn.sendall(b"+OK\r\n")
            conn.sendall(b"USER\r\nUIDL\r\nTOP\r\n")
            conn.sendall(b".\r\n")
        elif verb in (b"USER", b"PASS", b"NOOP", b"RSET", b"DELE"):
            conn.sendall(b"+OK\r\n")
        elif verb == b"STAT":
            conn.sendall(b"+OK %d %d\r\n" % (len(files), sum(sizes)))
        elif verb in (b"LIST", b"UIDL"):
            conn.sendall(b"+OK\r\n")
            if verb == b"LIST":
                body = b"".join(b"%d %d\r\n" % (i + 1, s) for i, s in enumerate(sizes))
            else:
                body = b"".join(b"%d %s\r\n" % (i + 1, os.path.basename(f).split(":")[0].encode())
                                for i, f in enumerate(files))
            conn.sendall(body)
            conn.sendall(b".\r\n")
        elif verb in (b"RETR", b"TOP") and 1 <= arg <= len(files):
            with open(files[arg - 1], "rb") as f:
                data = f.read()
            if verb == b"TOP":
                end = data.find(b"\r\n\r\n")
                data = data if end < 0 else data[:end + 4]
            conn.sendall(b"+OK %d octets\r\n" % sizes[arg - 1])
            conn.sendall(stuffed(data))
            conn.sendall(b".\r\n")
        elif verb == b"QUIT":
            conn.sendall(b"+OK bye\r\n")
            return
        else:
            conn.sendall(b"-ERR unknown command\r\n")


def main():
    maildir, port = sys.argv[1], int(sys.argv[2])
    files = load(maildir)
    sizes = [os.path.getsize(f) for f in files]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=lambda c=conn: (serve(c, files, sizes), c.close()), daemon=True).start()


if __name__ == "__main__":
    main()
