#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that delays every byte by DELAY seconds in each direction.

Each chunk is timestamped as it arrives and released DELAY later, in order, per direction; so a
round trip costs 2 x DELAY (default 25 ms each way = 50 ms, like a real provider) while bandwidth
is barely limited (up to MAX_BUFFER bytes may be in flight per direction; beyond that the proxy
stops reading, and TCP flow control slows the sender). Bytes pass through untouched, so TLS works.

usage: delay_proxy.py [--delay SECONDS] [--lifetime SECONDS] LISTEN_PORT:TARGET_PORT...
Prints "ready" on stdout once listening. Exits when killed, when its parent process exits, or after
--lifetime seconds (default 4 hours), whichever comes first.
"""
import argparse
import asyncio
import os
import sys

CHUNK = 256 * 1024
MAX_BUFFER = 64 * 1024 * 1024  # bytes queued per direction before the proxy stops reading


async def pump(reader, writer, delay):
    """Copies reader to writer, each chunk released `delay` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    queued = 0  # bytes read and not yet written
    room = asyncio.Event()
    room.set()

    async def receive():
        nonlocal queued
        try:
            while True:
                await room.wait()
                data = await reader.read(CHUNK)
                queue.put_nowait((loop.time() + delay, data))
                if not data:
                    return
                queued += len(data)
                if queued >= MAX_BUFFER:
                    room.clear()
        except (ConnectionError, OSError):
            queue.put_nowait((loop.time() + delay, b""))

    async def send():
        nonlocal queued
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                chunks = [data]
                # Write whatever else is already due in the same call.
                while not queue.empty() and queue._queue[0][0] <= loop.time() and queue._queue[0][1]:
                    chunks.append(queue.get_nowait()[1])
                writer.writelines(chunks)
                await writer.drain()
                queued -= sum(len(c) for c in chunks)
                if queued < MAX_BUFFER:
                    room.set()
        except (ConnectionError, OSError):
            pass

    receiver = asyncio.ensure_future(receive())
    try:
        await send()
    finally:
        receiver.cancel()


async def handle(client_reader, client_writer, target_port, delay):
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port, limit=CHUNK)
    except OSError:
        client_writer.close()
        return
    try:
        await asyncio.gather(pump(client_reader, server_writer, delay),
                             pump(server_reader, client_writer, delay))
    finally:
        for w in (client_writer, server_writer):
            w.close()


async def watch_parent(parent, lifetime):
    loop = asyncio.get_running_loop()
    end = loop.time() + lifetime
    while os.getppid() == parent and loop.time() < end:
        await asyncio.sleep(0.5)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.025, help="seconds per direction (0.025)")
    parser.add_argument("--lifetime", type=float, default=4 * 3600, help="exit after this many seconds")
    parser.add_argument("pairs", nargs="+", metavar="LISTEN_PORT:TARGET_PORT")
    args = parser.parse_args()
    parent = os.getppid()
    servers = []
    for pair in args.pairs:
        listen, target = (int(p) for p in pair.split(":"))
        servers.append(await asyncio.start_server(
            lambda r, w, t=target: handle(r, w, t, args.delay), "127.0.0.1", listen, reuse_address=True, limit=CHUNK))
    print("ready", flush=True)
    await watch_parent(parent, args.lifetime)
    for server in servers:
        server.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
