"""The HTTP side of make bench-api, in processes of its own (the served engine's process
keeps its cores and its GIL to itself): a client as any would be, standard library only.

    python -m bench.api.http_load pages URL CA PAGES LIMIT   -> {"ms": [...]}
    python -m bench.api.http_load load URL CA SECONDS CONNECTIONS LIMIT
        -> {"requests": n, "errors": n, "seconds": s, "ms": [...]}

The token comes in KESTREL_TOKEN (not on a command line). One JSON line on stdout.
Each connection is kept alive (HTTPS, the engine CA verified), as the engine's own
client keeps its connection.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import sys
import threading
import time
from urllib.parse import urlsplit


def connection(url: str, ca_file: str) -> tuple[http.client.HTTPSConnection, str]:
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=ca_file)
    return (http.client.HTTPSConnection(parts.hostname, parts.port, context=context,
                                        timeout=60), parts.path)


def get(conn: http.client.HTTPSConnection, path: str, token: str) -> bytes:
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status}: {body[:300]!r}")
    return body


def pages(url: str, ca_file: str, token: str, count: int, limit: int) -> dict:
    """GET every page of /vms in turn; the milliseconds of each, parsing included."""
    conn, prefix = connection(url, ca_file)
    get(conn, f"{prefix}/vms?limit=1", token)  # connection and TLS set up, not timed
    times = []
    for n in range(count):
        started = time.perf_counter()
        page = json.loads(get(conn, f"{prefix}/vms?offset={n * limit}&limit={limit}", token))
        times.append((time.perf_counter() - started) * 1000)
        if len(page["items"]) != min(limit, page["total"] - n * limit):
            raise RuntimeError(f"page {n}: {len(page['items'])} items of {page['total']}")
    conn.close()
    return {"ms": times}


def load(url: str, ca_file: str, token: str, seconds: float, connections: int,
         limit: int) -> dict:
    """``connections`` threads, each GETting /vms?limit= on its own connection until the
    time is up; the body is read, not parsed (the client's cost is not the server's)."""
    stop = time.monotonic() + seconds
    times: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        conn, prefix = connection(url, ca_file)
        get(conn, f"{prefix}/vms?limit=1", token)
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                get(conn, f"{prefix}/vms?limit={limit}", token)
            except (OSError, RuntimeError, http.client.HTTPException) as error:
                errors.append(str(error))
                conn.close()
                conn, prefix = connection(url, ca_file)
                continue
            times.append((time.perf_counter() - started) * 1000)
        conn.close()

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"requests": len(times), "errors": len(errors), "first_errors": errors[:3],
            "seconds": time.monotonic() - began, "ms": times}


def main(argv: list[str]) -> None:
    mode, url, ca_file, *rest = argv
    token = os.environ["KESTREL_TOKEN"]
    if mode == "pages":
        result = pages(url, ca_file, token, int(rest[0]), int(rest[1]))
    else:
        result = load(url, ca_file, token, float(rest[0]), int(rest[1]), int(rest[2]))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
