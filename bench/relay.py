#!/usr/bin/env python3
"""A TCP relay that behaves like a long, limited link: every byte is held for
DELAY_MS in each direction and leaves at no more than RATE_MBIT. This kernel has
no netem, so bench/compare.sh shapes its "1 Gbit/s, 40 ms round trip" scenario
with this relay on 127.0.0.1 instead.

    relay.py LISTEN_PORT TARGET_HOST:PORT DELAY_MS RATE_MBIT

It holds at most rate x delay (plus one piece) per direction, so a sender
feels the pipe fill up as on a real link; the rate is shared by all
connections in the same direction, like one link. Runs until killed.
"""
import collections
import socket
import sys
import threading
import time

PIECE = 64 << 10


class Link:
    """One direction of the link, shared by every connection through it."""

    def __init__(self, rate):
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = time.monotonic()

    def slot(self, due, size):
        """When a piece that may leave at `due` gets its turn on the wire."""
        with self.lock:
            start = max(due, self.next_free)
            self.next_free = start + size / self.rate
            return start


def pipe(src, dst, delay, link):
    limit = max(int(link.rate * delay), PIECE)
    held = collections.deque()
    cond = threading.Condition()
    state = {"bytes": 0, "eof": False}

    def reader():
        while True:
            try:
                data = src.recv(PIECE)
            except OSError:
                data = b""
            with cond:
                while data and state["bytes"] >= limit:
                    cond.wait()
                if not data:
                    state["eof"] = True
                else:
                    held.append((time.monotonic() + delay, data))
                    state["bytes"] += len(data)
                cond.notify_all()
            if not data:
                return

    def writer():
        while True:
            with cond:
                while not held and not state["eof"]:
                    cond.wait()
                if not held:
                    break
                due, data = held.popleft()
            start = link.slot(due, len(data))
            now = time.monotonic()
            if start > now:
                time.sleep(start - now)
            try:
                dst.sendall(data)
            except OSError:
                break
            with cond:
                state["bytes"] -= len(data)
                cond.notify_all()
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=reader, daemon=True).start()
    threading.Thread(target=writer, daemon=True).start()


def main():
    port, target, delay_ms, rate_mbit = sys.argv[1:5]
    host, tport = target.rsplit(":", 1)
    delay = float(delay_ms) / 1000
    rate = float(rate_mbit) * 1e6 / 8
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(port)))
    listener.listen(64)
    up, down = Link(rate), Link(rate)
    while True:
        client, _ = listener.accept()
        server = socket.create_connection((host, int(tport)))
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe(client, server, delay, up)
        pipe(server, client, delay, down)


if __name__ == "__main__":
    main()
