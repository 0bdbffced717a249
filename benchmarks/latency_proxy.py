"""A latency proxy for the storage benchmark: an asyncio TCP forwarder on 127.0.0.1 between an
HTTP client (s3fs, boto3, Lance) and an S3 server, run in its own process (it never shares a GIL
with the reader it measures).

* latency   every HTTP request seen from the client is held ``delay_ms`` before its first byte is
            forwarded to the server (a request's body, e.g. after ``100 Continue``, is not delayed
            again); responses are forwarded as they come.
* counting  requests (one per request line from client to server, by method), responses, bytes on
            the wire in each direction, and response body bytes (``Content-Length`` or chunked
            data; nothing for ``HEAD``, 1xx, 204, 304): parsed per connection, so counts are exact
            for keep-alive connections.
* control   a second port speaks lines: ``stats`` (a JSON object), ``reset`` (counters to zero),
            ``delay <ms>``, ``quit``. Any process may ask (the benchmark's phases run in their
            own processes).

``python -m benchmarks.latency_proxy --upstream 127.0.0.1:PORT --delay-ms 20`` prints one JSON
line ``{"port": P, "control": C}`` once it listens. :class:`LatencyProxy` starts it as a
subprocess (stopped by its PID) and :func:`control` talks to it.

Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

READ_BYTES = 1 << 18

HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILER, UNTIL_CLOSE = range(7)


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.methods: collections.Counter = collections.Counter()
        self.responses = 0
        self.statuses: collections.Counter = collections.Counter()
        self.bytes_up = 0          # client -> server, on the wire
        self.bytes_down = 0        # server -> client, on the wire
        self.body_up = 0           # request bodies
        self.body_down = 0         # response bodies
        self.body_down_error = 0   # ... of responses with a status >= 300 (e.g. a 404's XML)
        self.connections = 0
        self.t0 = time.monotonic()

    def as_dict(self, delay_ms: float) -> dict[str, Any]:
        return {"requests": self.requests, "methods": dict(self.methods), "responses": self.responses,
                "statuses": {str(k): v for k, v in self.statuses.items()}, "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down, "body_up": self.body_up, "body_down": self.body_down, "body_down_error": self.body_down_error,
                "connections": self.connections, "seconds": time.monotonic() - self.t0, "delay_ms": delay_ms}


class HTTPParser:
    """One direction of one connection: finds where messages start, counts body bytes.

    ``pending`` is the connection's FIFO of request methods (the request side appends, the
    response side pops), so a response to ``HEAD`` is known to have no body."""

    def __init__(self, request: bool, pending: collections.deque, stats: Stats) -> None:
        self.request, self.pending, self.stats = request, pending, stats
        self.state = HEAD
        self.buf = bytearray()
        self.left = 0
        self.status = 0
        self.broken = False  # unparseable: stop parsing, keep forwarding

    def _body(self, n: int) -> None:
        if self.request:
            self.stats.body_up += n
        else:
            self.stats.body_down += n
            if self.status >= 300:
                self.stats.body_down_error += n

    def feed(self, data: bytes) -> list[int]:
        """Offsets in ``data`` where a new message begins."""
        starts: list[int] = []
        if self.broken:
            return starts
        i, n = 0, len(data)
        while i < n:
            st = self.state
            if st == HEAD:
                if not self.buf:
                    if data[i:i + 2] == b"\r\n":  # stray CRLF between messages
                        i += 2
                        continue
                    starts.append(i)
                old = len(self.buf)
                self.buf += data[i:]
                p = self.buf.find(b"\r\n\r\n", max(0, old - 3))
                if p < 0:
                    if len(self.buf) > 1 << 20:
                        self.broken = True
                    break
                head = bytes(self.buf[:p + 4])
                i += p + 4 - old
                self.buf.clear()
                self._on_head(head)
            elif st in (BODY, CHUNK_DATA, CHUNK_CRLF):
                take = min(self.left, n - i)
                if st != CHUNK_CRLF:
                    self._body(take)
                self.left -= take
                i += take
                if self.left == 0:
                    if st == BODY:
                        self.state = HEAD
                    elif st == CHUNK_DATA:
                        self.state, self.left = CHUNK_CRLF, 2
                    else:
                        self.state = CHUNK_SIZE
            elif st in (CHUNK_SIZE, TRAILER):
                old = len(self.buf)
                self.buf += data[i:]
                p = self.buf.find(b"\r\n", max(0, old - 1))
                if p < 0:
                    break
                line = bytes(self.buf[:p])
                i += p + 2 - old
                self.buf.clear()
                if st == TRAILER:
                    if not line:
                        self.state = HEAD
                else:
                    try:
                        size = int(line.split(b";")[0].strip() or b"0", 16)
                    except ValueError:
                        self.broken = True
                        break
                    self.state, self.left = (CHUNK_DATA, size) if size else (TRAILER, 0)
            else:  # UNTIL_CLOSE
                self._body(n - i)
                i = n
        return starts

    def _on_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        first = lines[0].split(b" ")
        headers = {}
        for line in lines[1:]:
            if b":" in line:
                k, v = line.split(b":", 1)
                headers[k.strip().lower()] = v.strip().lower()
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"")
        length = headers.get(b"content-length")
        if self.request:
            method = first[0].decode("latin-1", "replace")
            self.pending.append(method)
            self.stats.requests += 1
            self.stats.methods[method] += 1
            no_body = False
        else:
            try:
                status = int(first[1])
            except (IndexError, ValueError):
                self.broken = True
                return
            if 100 <= status < 200:  # interim (100 Continue): the request goes on
                self.state = HEAD
                return
            method = self.pending.popleft() if self.pending else "?"
            self.status = status
            self.stats.responses += 1
            self.stats.statuses[status] += 1
            no_body = method == "HEAD" or status in (204, 304)
        if no_body:
            self.state = HEAD
        elif chunked:
            self.state = CHUNK_SIZE
        elif length is not None:
            self.left = int(length)
            self.state = BODY if self.left else HEAD
        else:
            self.state = HEAD if self.request else UNTIL_CLOSE


class Proxy:
    def __init__(self, upstream: tuple[str, int], delay_ms: float) -> None:
        self.upstream = upstream
        self.delay_ms = delay_ms
        self.stats = Stats()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: HTTPParser,
                    up: bool) -> None:
        try:
            while True:
                data = await reader.read(READ_BYTES)
                if not data:
                    break
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                starts = parser.feed(data)
                pos = 0
                if up and self.delay_ms > 0:
                    for s in starts:
                        if s > pos:
                            writer.write(data[pos:s])
                            pos = s
                        await asyncio.sleep(self.delay_ms / 1000)
                writer.write(data[pos:] if pos else data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except (OSError, RuntimeError):
                pass

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            sreader, swriter = await asyncio.open_connection(*self.upstream)
        except OSError:
            cwriter.close()
            return
        for w in (cwriter, swriter):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending: collections.deque = collections.deque()
        await asyncio.gather(self._pump(creader, swriter, HTTPParser(True, pending, self.stats), True),
                             self._pump(sreader, cwriter, HTTPParser(False, pending, self.stats), False))
        for w in (cwriter, swriter):
            w.close()

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line = (await reader.readline()).decode().strip()
            if not line:
                break
            cmd, _, arg = line.partition(" ")
            if cmd == "stats":
                out: Any = self.stats.as_dict(self.delay_ms)
            elif cmd == "reset":
                self.stats.reset()
                out = {"ok": True}
            elif cmd == "delay":
                self.delay_ms = float(arg)
                out = {"ok": True, "delay_ms": self.delay_ms}
            elif cmd == "quit":
                writer.write(b'{"ok": true}\n')
                await writer.drain()
                os._exit(0)
            else:
                out = {"error": f"unknown command {cmd!r}"}
            writer.write((json.dumps(out) + "\n").encode())
            await writer.drain()
        writer.close()

    async def serve(self) -> None:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0, limit=READ_BYTES)
        ctl = await asyncio.start_server(self.control, "127.0.0.1", 0)
        print(json.dumps({"port": server.sockets[0].getsockname()[1], "control": ctl.sockets[0].getsockname()[1],
                          "pid": os.getpid()}), flush=True)
        async with server, ctl:
            await asyncio.gather(server.serve_forever(), ctl.serve_forever())


def control(port: int, command: str, timeout: float = 10.0) -> dict[str, Any]:
    """Send one control ``command`` to the proxy whose control port is ``port``; its JSON answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(command.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


class LatencyProxy:
    """The proxy as a subprocess of this one (``with LatencyProxy(...) as p``; stopped by its PID)."""

    def __init__(self, upstream: str, delay_ms: float) -> None:
        self.upstream, self.delay_ms = upstream, delay_ms
        self.proc: subprocess.Popen | None = None
        self.port = self.control_port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LatencyProxy":
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.latency_proxy", "--upstream", self.upstream,
                                      "--delay-ms", str(self.delay_ms)], stdout=subprocess.PIPE, cwd=root,
                                     start_new_session=True)
        line = self.proc.stdout.readline() if self.proc.stdout else b""
        if not line:
            raise RuntimeError(f"latency proxy did not start (exit {self.proc.wait(5)})")
        info = json.loads(line)
        self.port, self.control_port = info["port"], info["control"]
        return self

    def stats(self) -> dict[str, Any]:
        return control(self.control_port, "stats")

    def reset(self) -> None:
        control(self.control_port, "reset")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> "LatencyProxy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True, help="host:port of the server")
    p.add_argument("--delay-ms", type=float, default=20.0, help="added before each request is forwarded")
    a = p.parse_args(argv)
    host, _, port = a.upstream.rpartition(":")
    try:
        asyncio.run(Proxy((host.strip("[]") or "127.0.0.1", int(port)), a.delay_ms).serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
