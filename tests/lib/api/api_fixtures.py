"""Fixtures for the API tests (import them): one engine API served over TLS per test module
stood in by FakeAgents, and an httpx client per token."""

from __future__ import annotations

import ssl

import httpx
import pytest
from api_server import served_api
from conftest import FakeAgent


@pytest.fixture(scope="module")
def agents():
    return {}


@pytest.fixture(scope="module")
def api(tmp_path_factory, agents):
    def factory(address, port):
        return agents.setdefault(address, FakeAgent(address))

    with served_api(tmp_path_factory, agent_factory=factory, max_body=64 * 1024) as served:
        yield served


@pytest.fixture(scope="module")
def connect(api):
    context = ssl.create_default_context(cafile=api.ca_file)
    clients = []

    def client(token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        made = httpx.Client(base_url=api.url, verify=context, headers=headers, timeout=30)
        clients.append(made)
        return made

    yield client
    for made in clients:
        made.close()


@pytest.fixture(scope="module")
def admin(api, connect):
    return connect(api.admin_token)
