"""``make api-fuzz``: schemathesis against a fresh engine API over TLS, as a SuperUser.

Serves a new engine (its own directory, SQLite) with ``kestrel engine serve``, makes a
SuperUser token with the engine host's own CLI, and runs ``schemathesis run`` on the
served OpenAPI document with the checks that matter to clients: no 5xx, every status and
body as documented. Exits with schemathesis' status (non-zero on any finding).

Everything runs in a network namespace of its own with only loopback: fuzzed operations
that reach out (a host address, an image URL) fail at once and touch no other machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
KESTREL = str(BIN / "kestrel")
SCHEMATHESIS = str(BIN / "schemathesis")
CHECKS = ("not_a_server_error,response_schema_conformance,status_code_conformance,"
          "content_type_conformance")
IN_NAMESPACE = "KESTREL_API_FUZZ_NETNS"
# Operations that can lock the fuzzer out (remove or disable its user, revoke its grant or
# token): the stateful phase follows links to them from whoami's user name, so they are
# fuzzed in a second run without that phase.
SELF_HARM = ("users.remove", "users.ensure", "permissions.ensure", "tokens.revoke")
PORT = 8443  # free in a namespace of our own
USER = "fuzz"


def _isolate() -> None:
    """Re-run this script in a new network namespace (root), loopback up."""
    if os.environ.get(IN_NAMESPACE):
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    env = dict(os.environ, **{IN_NAMESPACE: "1"})
    os.execvpe("unshare", ["unshare", "--net", sys.executable, *sys.argv], env)


def _kestrel(*args: str, stdin: str | None = None) -> str:
    return subprocess.run([KESTREL, *args], input=stdin, check=True, text=True,
                          stdout=subprocess.PIPE).stdout


def _wait_for_api(url: str, ca_file: str, server: subprocess.Popen, timeout_s: float) -> None:
    context = ssl.create_default_context(cafile=ca_file)
    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            raise SystemExit(f"kestrel engine serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/openapi.json", context=context, timeout=5):
                return
        except (OSError, ssl.SSLError):
            if time.monotonic() > deadline:
                raise SystemExit(f"the engine API did not answer at {url} in {timeout_s} s") \
                    from None
            time.sleep(0.2)  # a server coming up: nothing to wait on but its port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=20,
                        help="test cases per operation and phase (bounds the run's time)")
    parser.add_argument("--seed", type=int, help="schemathesis' random seed (a rerun)")
    parser.add_argument("--report-dir", help="keep schemathesis' JUnit report here")
    parser.add_argument("--keep", action="store_true", help="keep the engine directory")
    args = parser.parse_args()
    _isolate()

    engine_dir = tempfile.mkdtemp(prefix="kestrel-api-fuzz-")
    where = ["--engine-dir", engine_dir]
    server = None
    try:
        _kestrel("engine", "init", *where)
        _kestrel("user", "set", USER, "--role", "SuperUser", *where)
        token = _kestrel("token", "create", "--user", USER, "--name", "api-fuzz",
                         *where).strip()
        server = subprocess.Popen([KESTREL, "engine", "serve", *where, "--bind", "127.0.0.1",
                                   "--port", str(PORT), "--address", "localhost"])
        url = f"https://localhost:{PORT}/api/v1"
        ca_file = os.path.join(engine_dir, "pki", "ca.pem")
        _wait_for_api(url, ca_file, server, timeout_s=60)
        common = [SCHEMATHESIS, "run", f"{url}/openapi.json", "--checks", CHECKS,
                  "--max-examples", str(args.max_examples), "--tls-verify", ca_file,
                  "-H", f"Authorization: Bearer {token}",
                  # One worker: hypothesis' lambda descriptions are not thread-safe on 3.11.
                  "--workers", "1", "--request-timeout", "30", "--no-color",
                  "--suppress-health-check", "too_slow,filter_too_much",
                  "--output-sanitize", "true", "--generation-database", "none"]
        if args.seed is not None:
            common += ["--seed", str(args.seed)]
        excluded = [part for op in SELF_HARM for part in ("--exclude-operation-id", op)]
        included = [part for op in SELF_HARM for part in ("--include-operation-id", op)]
        runs = {"everything else": [*excluded, "--phases", "coverage,fuzzing,stateful"],
                "access changes": [*included, "--phases", "coverage,fuzzing"]}
        failed = 0
        for title, options in runs.items():
            print(f"==> schemathesis: {title}", flush=True)
            report = (["--report", "junit", "--report-dir",
                       os.path.join(args.report_dir, title.replace(" ", "-"))]
                      if args.report_dir else [])
            failed |= subprocess.run([*common, *options, *report]).returncode
        return failed
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(engine_dir, ignore_errors=True)
        else:
            print(f"engine directory kept: {engine_dir}", file=sys.stderr)


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    sys.exit(main())
