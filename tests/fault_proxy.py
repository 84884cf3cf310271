"""A small HTTP fault proxy for the reliability tests: it sits in front of a real server (moto's S3 server, or the
kube-apiserver over TLS) and, request by request, forwards, answers with an error of its own, resets the
connection, holds the request, or rewrites the real response. Faults are queued per matching request, so a test
says exactly what goes wrong and counts what reached the server. Watches (``watch=true``) are relayed as they
stream, chunk by chunk; `FaultProxy.drop_watches` drops the ones open at that moment silently: the upstream
connection is closed, the client's stays open and receives nothing more, as behind a proxy that lost the stream.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import ssl
import struct
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

Headers = dict[str, str]


@dataclass
class Fault:
    """What to do to one request matching `method` (and `query`, a substring of the query string)."""

    method: str
    kind: str  # "status": answer `status` with `body`; "reset": RST instead of a reply; "hold": block until released;
    # "rewrite": forward, then pass the real response's headers through `rewrite`; "stall": forward (the server
    # acts on it), then hold the reply until released and reset the connection (the client never hears back)
    status: int = 503
    body: bytes = b""
    headers: Headers = field(default_factory=dict)
    query: str = ""
    rewrite: Callable[[Headers], Headers] | None = None
    path: str = ""  # a substring of the path

    def matches(self, method: str, path: str) -> bool:
        parts = urllib.parse.urlsplit(path)
        return method == self.method and self.query in parts.query and self.path in parts.path


SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def slow_down(method: str, **kwargs: object) -> Fault:
    return Fault(method, "status", status=503, body=SLOW_DOWN, headers={"Content-Type": "application/xml"}, **kwargs)  # type: ignore[arg-type]


@dataclass
class _Watch:
    path: str
    upstream: http.client.HTTPConnection
    dropped: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    """``with FaultProxy("http://127.0.0.1:PORT") as proxy:`` then point clients at ``proxy.url``."""

    def __init__(self, upstream: str, ca_file: str | None = None) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.tls = ssl.create_default_context(cafile=ca_file) if parts.scheme == "https" else None
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request, faulted or not
        self.held = threading.Event()  # set when a "hold" fault has caught its request
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._watches: list[_Watch] = []
        self._closing = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._take(self.command, self.path)
                if fault is not None and fault.kind == "reset":
                    # SO_LINGER 0: close() sends RST, what a dropped connection looks like to the client.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if fault is not None and fault.kind == "stall":
                    proxy._forward(self.command, self.path, dict(self.headers), body)
                    proxy.held.set()
                    proxy.release.wait(timeout=600)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if fault is not None and fault.kind == "hold":
                    proxy.held.set()
                    proxy.release.wait(timeout=120)
                    self.close_connection = True
                    return
                if fault is not None and fault.kind == "status":
                    self._reply(fault.status, {**fault.headers, "Content-Length": str(len(fault.body))}, fault.body)
                    return
                if "watch=true" in urllib.parse.urlsplit(self.path).query:
                    self._relay(body)
                    return
                status, headers, payload = proxy._forward(self.command, self.path, dict(self.headers), body)
                if fault is not None and fault.rewrite is not None:
                    headers = fault.rewrite(headers)
                self._reply(status, headers, payload)

            def _reply(self, status: int, headers: Headers, payload: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _relay(self, body: bytes) -> None:
                connection = proxy._connect(timeout=None)
                watch = _Watch(self.path, connection)
                with proxy._lock:
                    proxy._watches.append(watch)
                try:
                    connection.request(self.command, self.path, body=body or None, headers=dict(self.headers))
                    response = connection.getresponse()
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(key, value)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    while (data := response.read1(65536)) and not watch.dropped.is_set():
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                    if not watch.dropped.is_set():
                        self.wfile.write(b"0\r\n\r\n")
                except (OSError, http.client.HTTPException):
                    pass  # either side went away (an operator killed, the server ending the watch, a test ending)
                finally:
                    connection.close()
                    with proxy._lock:
                        proxy._watches.remove(watch)
                if watch.dropped.is_set():
                    proxy._closing.wait()  # the client's connection stays open, silent, until the proxy ends
                self.close_connection = True

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _any  # noqa: N815 - http.server's names

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def drop_watches(self, path: str = "") -> int:
        """Drop every watch open now whose path holds `path`, silently; returns how many. Later ones pass."""
        with self._lock:
            found = [watch for watch in self._watches if path in urllib.parse.urlsplit(watch.path).path]
        for watch in found:
            watch.dropped.set()
            if watch.upstream.sock is not None:  # wakes the relay blocked on its read
                with contextlib.suppress(OSError):
                    watch.upstream.sock.shutdown(socket.SHUT_RDWR)
        return len(found)

    def count(self, method: str, query: str = "", path: str = "") -> int:
        with self._lock:
            return sum(1 for m, p in self.seen if Fault(method, "", query=query, path=path).matches(m, p))

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.seen.append((method, path))
            for index, fault in enumerate(self.faults):
                if fault.matches(method, path):
                    return self.faults.pop(index)
        return None

    def _connect(self, timeout: float | None = 60) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection(*self.upstream, timeout=timeout, context=self.tls)
        return http.client.HTTPConnection(*self.upstream, timeout=timeout)

    def _forward(self, method: str, path: str, headers: Headers, body: bytes) -> tuple[int, Headers, bytes]:
        connection = self._connect()
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
