"""The agent client's limits, against a real TLS server on 127.0.0.1 that misbehaves:
a total deadline per call (an agent trickling a byte every 0.5 s is cut at it, not
held for as long as it trickles) and a cap on the answer (a huge Content-Length is
refused unread; an endless chunked or unframed answer is cut at the cap).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable

import pytest

from engine_lib import pki
from engine_lib.broker import REPLY_CAP, AgentClient
from engine_lib.protocol.errors import AgentUnreachable, ReplyTooLarge

MiB = 1 << 20
TRICKLE_S = 0.5
PIECE = b"x" * (64 << 10)


@pytest.fixture(scope="module")
def engine_pki(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "pki"
    pki.init_ca(str(path))
    return path


class Agent:
    """Accepts one connection at a time, reads the request head, then lets ``answer``
    write to the TLS connection; ``sent`` counts the bytes it got out."""

    def __init__(self, pki_dir, tmp_path, answer: Callable[[Agent, ssl.SSLSocket], None]):
        key, cert = pki.issue(str(pki_dir), "agent", ["127.0.0.1"])
        (tmp_path / "agent.key").write_bytes(key)
        (tmp_path / "agent.pem").write_bytes(cert)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(tmp_path / "agent.pem", tmp_path / "agent.key")
        self.answer = answer
        self.sent = 0
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed: the test is over
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        head += tls.recv(4096)
                    self.answer(self, tls)
            except OSError:
                pass  # the client hung up: what these answers are for

    def send(self, tls: ssl.SSLSocket, data: bytes) -> None:
        tls.sendall(data)
        self.sent += len(data)

    def close(self) -> None:
        self.stop.set()
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def serve(engine_pki, tmp_path):
    servers = []

    def start(answer):
        servers.append(Agent(engine_pki, tmp_path, answer))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
TRICKLED = {
    # every byte of the status line, the headers and the body a trickle apart
    "head": HEAD + b"Content-Length: 2\r\n\r\n{}",
    # the head at once, then a 30-byte body a byte at a time
    "body": HEAD + b'Content-Length: 30\r\n\r\n{"hostname": "trickled-host"}',
}


@pytest.mark.parametrize("part", sorted(TRICKLED))
def test_an_agent_trickling_its_answer_is_cut_at_the_calls_total_deadline(serve, engine_pki,
                                                                          part):
    answer = TRICKLED[part]
    at_once = answer.index(b"\r\n\r\n") + 4 if part == "body" else 0

    def trickle(agent, tls):
        agent.send(tls, answer[:at_once])
        for byte in answer[at_once:]:  # 20 s or more in all: far past the deadline
            if agent.stop.wait(TRICKLE_S):
                return
            agent.send(tls, bytes([byte]))

    agent = serve(trickle)
    client = AgentClient("127.0.0.1", agent.port, str(engine_pki), timeout=1.5)
    started = time.monotonic()
    with pytest.raises(AgentUnreachable, match="no answer within 1.5 s"):
        client.host_info()
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 1.5 + TRICKLE_S, elapsed
    assert agent.sent > at_once  # it did keep trickling, each byte within a read's timeout


def test_an_agent_that_accepts_but_never_speaks_tls_is_cut_at_the_deadline(engine_pki):
    with socket.create_server(("127.0.0.1", 0)) as listener:  # a stopped agent's socket
        client = AgentClient("127.0.0.1", listener.getsockname()[1], str(engine_pki))
        started = time.monotonic()
        with pytest.raises(AgentUnreachable, match="no answer within 0.8 s"):
            client.host_info(timeout=0.8)
        assert 0.8 <= time.monotonic() - started < 1.3


def _traced(call: Callable[[], object]) -> tuple[Exception | None, int]:
    """What ``call`` raised and the peak of Python memory it allocated meanwhile."""
    tracemalloc.start()
    try:
        call()
        error = None
    except Exception as exc:  # handed to the test to judge
        error = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return error, peak


def test_a_huge_content_length_is_refused_before_the_body_is_read(serve, engine_pki):
    announced = 100 * MiB

    def huge(agent, tls):
        agent.send(tls, HEAD + f"Content-Length: {announced}\r\n\r\n".encode())
        for _ in range(announced // len(PIECE)):
            agent.send(tls, PIECE)

    agent = serve(huge)
    client = AgentClient("127.0.0.1", agent.port, str(engine_pki))
    error, peak = _traced(client.host_info)
    assert isinstance(error, ReplyTooLarge), error
    assert f"more than {REPLY_CAP} bytes (announced {announced} bytes)" in error.message
    assert error.details == {"agent": f"127.0.0.1:{agent.port}", "limit": REPLY_CAP}
    assert peak < MiB, peak  # nothing of the body was held


def _chunked(agent, tls):
    agent.send(tls, HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (len(PIECE), PIECE)
    for _ in range(1024):  # 64 MiB, then it would end: far past the cap
        agent.send(tls, chunk)
    agent.send(tls, b"0\r\n\r\n")


def _unframed(agent, tls):
    agent.send(tls, HEAD + b"Connection: close\r\n\r\n")
    for _ in range(1024):
        agent.send(tls, PIECE)


@pytest.mark.parametrize("answer", [_chunked, _unframed], ids=["chunked", "no-length"])
def test_an_answer_of_unknown_length_is_cut_at_the_cap(serve, engine_pki, answer):
    agent = serve(answer)
    client = AgentClient("127.0.0.1", agent.port, str(engine_pki), reply_cap=MiB)
    error, peak = _traced(client.host_info)
    assert isinstance(error, ReplyTooLarge), error
    assert f"more than {MiB} bytes (sent more)" in error.message
    assert peak < 3 * MiB, peak  # the cap and a piece, not the 64 MiB on offer


@pytest.mark.parametrize(("call", "fits"), [("list_vms", True), ("vm_status", False)])
def test_lists_get_a_larger_cap_than_answers_about_one_vm(serve, engine_pki, call, fits):
    body = json.dumps({"vms": [{"id": "x" * 1000}] * (REPLY_CAP // 1000)}).encode()

    def big(agent, tls):
        agent.send(tls, HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    client = AgentClient("127.0.0.1", serve(big).port, str(engine_pki))
    if fits:
        assert len(getattr(client, call)()) == REPLY_CAP // 1000
    else:
        with pytest.raises(ReplyTooLarge):
            getattr(client, call)("6f1d2c9e-8a4b-4c1e-9f7a-0123456789ab")
