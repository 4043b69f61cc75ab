"""Image bytes to and from an agent (a real TLS server on 127.0.0.1): streamed in pieces,
hashed as they go, memory bounded whatever the size, and limited by an idle timeout per
piece rather than the call's total deadline (an upload takes as long as it takes)."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import ssl
import threading
import tracemalloc
from collections.abc import Callable

import pytest

from engine_lib import broker, pki
from engine_lib.broker import AgentClient
from engine_lib.protocol.errors import AgentError, AgentUnreachable, InvalidSpec

MIB = 1 << 20
SIZE = 24 * MIB


@pytest.fixture(scope="module")
def engine_pki(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "pki"
    pki.init_ca(str(path))
    return path


@pytest.fixture(autouse=True)
def idle_timeout(monkeypatch):
    monkeypatch.setattr(broker, "STREAM_IDLE_TIMEOUT", 5.0)


@pytest.fixture
def serve(engine_pki, tmp_path):
    """Start a one-connection-at-a-time TLS server whose ``handle(reader, tls)`` answers."""
    key, cert = pki.issue(str(engine_pki), "agent", ["127.0.0.1"])
    (tmp_path / "a.key").write_bytes(key)
    (tmp_path / "a.pem").write_bytes(cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "a.pem", tmp_path / "a.key")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def start(handle: Callable) -> AgentClient:
        def loop():
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        reader = tls.makefile("rb")
                        headers = {}
                        reader.readline()
                        while (line := reader.readline().strip()):
                            name, _, value = line.decode().partition(":")
                            headers[name.lower()] = value.strip()
                        handle(reader, tls, headers, stop)
                        reader.close()  # then the connection closes, as the agent's does
                        tls.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        threading.Thread(target=loop, daemon=True).start()
        return AgentClient("127.0.0.1", listener.getsockname()[1], str(engine_pki), timeout=1)
    yield start
    stop.set()
    listener.close()


def _json(tls, status: int, document: dict) -> None:
    body = json.dumps(document).encode()
    tls.sendall(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


class Zeros(io.RawIOBase):
    """A stream of ``size`` bytes that is never whole in memory."""

    def __init__(self, size: int):
        self.left = size

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_an_upload_is_streamed_hashed_and_outlives_the_total_deadline(serve):
    """The server reads slowly (the whole upload takes longer than the client's 1 s
    deadline); no piece waits longer than the idle timeout, so it goes through."""
    def handle(reader, tls, headers, stop):
        digest, left = hashlib.sha256(), int(headers["content-length"])
        while left:
            piece = reader.read(min(left, 256 << 10))
            digest.update(piece)
            left -= len(piece)
            if left % (4 * MIB) == 0:
                stop.wait(0.25)
        _json(tls, 200, {"received": int(headers["content-length"]),
                         "sha256": digest.hexdigest()})

    client = serve(handle)
    seen = []
    tracemalloc.start()
    try:
        answer = client.send_upload("job", io.BufferedReader(Zeros(SIZE)), SIZE, seen.append)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected = hashlib.sha256(bytes(SIZE)).hexdigest()
    assert answer == {"received": SIZE, "sha256": expected, "agent_sha256": expected}
    assert seen[0] == MIB and seen[-1] == SIZE and len(seen) == SIZE // MIB
    assert peak < SIZE // 3, peak  # a few pieces (both ends count here), never the image


def test_an_agent_that_stops_reading_is_cut_at_the_idle_timeout(serve, monkeypatch):
    monkeypatch.setattr(broker, "STREAM_IDLE_TIMEOUT", 0.5)

    def handle(reader, tls, headers, stop):
        stop.wait(10)  # reads nothing: the client's sends block once the buffers fill

    client = serve(handle)
    with pytest.raises(AgentUnreachable, match="idle for 0.5 s"):
        client.send_upload("job", io.BufferedReader(Zeros(SIZE)), SIZE)


def test_an_agent_refusing_mid_stream_is_answered_with_its_error(serve):
    def handle(reader, tls, headers, stop):
        reader.read(MIB)
        _json(tls, 400, {"error": {"code": "InvalidSpec", "message": "length: too big",
                                   "details": {"field": "length", "reason": "too big"}}})

    client = serve(handle)
    with pytest.raises(InvalidSpec) as caught:
        client.send_upload("job", io.BufferedReader(Zeros(SIZE)), SIZE)
    assert caught.value.field == "length"


def test_an_export_is_read_in_pieces_into_the_file_and_hashed(serve, tmp_path):
    def handle(reader, tls, headers, stop):
        tls.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Length: {SIZE}\r\n\r\n".encode())
        for _ in range(SIZE // MIB):
            tls.sendall(bytes(MIB))
            stop.wait(0.05)

    client = serve(handle)
    seen = []
    tracemalloc.start()
    try:
        with open(tmp_path / "out", "wb") as out:
            answer = client.read_export("job", out, seen.append)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert answer == {"received": SIZE, "sha256": hashlib.sha256(bytes(SIZE)).hexdigest()}
    assert (tmp_path / "out").stat().st_size == SIZE and seen[-1] == SIZE
    assert peak < SIZE // 3, peak


def test_an_export_cut_short_is_an_error(serve, tmp_path):
    def handle(reader, tls, headers, stop):
        tls.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n".encode() + bytes(MIB))

    client = serve(handle)
    with open(tmp_path / "out", "wb") as out, \
            pytest.raises(AgentError, match="sent 1048576 of the export.s 25165824 bytes"):
        client.read_export("job", out)
