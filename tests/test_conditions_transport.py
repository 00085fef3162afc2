"""The Frontier client's HTTP leg against real sockets on loopback: requests as a proxy sees them,
kept-alive connections, a connection the server dropped silently, refused connections and read timeouts
told apart (the client marks a proxy bad only for the former)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from junodcs.conditions.transport import Transport, Unreachable


def answer(body: bytes, *, close: bool = False) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "")
    return head.encode() + b"\r\n" + body


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[socket.socket, list[bytes]], None]], tuple[int, list[bytes]]]]:
    """Start a one-thread loopback server running `handler(connection, seen)` per accepted connection."""
    listeners: list[socket.socket] = []

    def start(handler: Callable[[socket.socket, list[bytes]], None]) -> tuple[int, list[bytes]]:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        seen: list[bytes] = []

        def loop() -> None:
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return
                with connection:
                    handler(connection, seen)

        threading.Thread(target=loop, daemon=True).start()
        return listener.getsockname()[1], seen

    yield start
    for listener in listeners:
        listener.close()


def read_request(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return b""
        data += chunk
    return data


def test_proxy_requests_use_absolute_uris_on_one_kept_alive_connection(server) -> None:  # type: ignore[no-untyped-def]
    def handler(connection: socket.socket, seen: list[bytes]) -> None:
        while request := read_request(connection):
            seen.append(request)
            connection.sendall(answer(b"payload %d" % len(seen)))

    port, seen = server(handler)
    transport = Transport(f"http://127.0.0.1:{port}", connect_timeout=2, read_timeout=2)
    url = "http://frontier.example:8000/Frontier?type=frontier_request:1:DEFAULT&p1=eNo"
    first = transport.get(url, {"Cache-Control": "max-stale=1", "X-Frontier-Id": "test"})
    second = transport.get(url, {"Cache-Control": "max-stale=1,max-age=0"})
    transport.close()
    assert (first.status_code, first.content, second.content) == (200, b"payload 1", b"payload 2")
    assert seen[0].startswith(f"GET {url} HTTP/1.1\r\n".encode())
    assert b"\r\nHost: frontier.example:8000\r\n" in seen[0] and b"\r\nX-Frontier-Id: test\r\n" in seen[0]
    assert b"max-age=0" in seen[1]
    assert len(seen) == 2  # both on the one connection the handler served


def test_silently_dropped_connection_is_retried_once_on_a_fresh_one(server) -> None:  # type: ignore[no-untyped-def]
    def handler(connection: socket.socket, seen: list[bytes]) -> None:  # answers, then hangs up unannounced
        if read_request(connection):
            seen.append(b"x")
            connection.sendall(answer(b"ok %d" % len(seen)))

    port, seen = server(handler)
    transport = Transport(None, connect_timeout=2, read_timeout=2)
    url = f"http://127.0.0.1:{port}/Frontier?x=1"
    assert [transport.get(url, {}).content for _ in range(3)] == [b"ok 1", b"ok 2", b"ok 3"]
    transport.close()


def test_refused_and_timed_out_are_told_apart(server) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed_port = free.getsockname()[1]
    transport = Transport(f"http://127.0.0.1:{closed_port}", connect_timeout=1, read_timeout=1)
    with pytest.raises(Unreachable) as refused:
        transport.get("http://127.0.0.1:1/Frontier", {})
    assert refused.value.connect is True

    def silent(connection: socket.socket, seen: list[bytes]) -> None:
        read_request(connection)
        seen.append(b"x")
        connection.recv(1)  # never answers; returns when the client gives up

    port, seen = server(silent)
    transport = Transport(None, connect_timeout=1, read_timeout=0.3)
    with pytest.raises(Unreachable) as timed_out:
        transport.get(f"http://127.0.0.1:{port}/Frontier", {})
    assert timed_out.value.connect is False and str(timed_out.value).startswith("ReadTimeout")
    assert seen == [b"x"]  # not retried: a slow server is not a dropped connection
    with pytest.raises(ValueError):
        Transport("https://squid:3128", connect_timeout=1, read_timeout=1)
