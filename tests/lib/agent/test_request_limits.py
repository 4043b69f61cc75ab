"""Malformed requests at the agent get a 4xx naming what is wrong, never a traceback or a 500.

A real AgentServer over TLS on 127.0.0.1 (libvirt's test driver behind it; these
requests never reach it).
"""

from __future__ import annotations

import http.client
import json
import time

import agent_server
import pytest

from engine_lib.broker import client_context


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    with agent_server.serving(tmp_path_factory) as (_api, port, pki_dir):
        yield port, client_context(pki_dir)


def _post(agent, body: bytes, length: str | None = None) -> tuple[int, dict]:
    port, context = agent
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.putrequest("POST", "/api/v1/vms")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)) if length is None else length)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize("length", ["\u00b2", "-1", "1e3", "0x10"])
def test_a_content_length_that_is_not_ascii_digits_is_400(agent, length):
    status, doc = _post(agent, b"", length)
    assert status == 400
    assert doc["error"]["details"]["field"] == "Content-Length"


def test_a_content_length_of_many_digits_is_413(agent):
    status, doc = _post(agent, b"", "9" * 5000)
    assert status == 413
    assert "too large" in doc["error"]["message"]


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_json_is_400_in_bounded_time(agent, depth):
    body = b'{"xml": ' + b"[" * depth + b"]" * depth + b"}"
    started = time.monotonic()
    status, doc = _post(agent, body)
    assert status == 400, doc
    assert doc["error"]["details"]["field"] == "body"
    assert "nested more than 32 levels" in doc["error"]["message"]
    assert time.monotonic() - started < 5
