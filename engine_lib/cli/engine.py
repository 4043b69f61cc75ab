"""``kestrel engine init|ssh-key|sign-csr|run|serve`` and ``kestrel events``: the engine itself."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from engine_lib.cli.common import open_engine, print_json
from engine_lib.protocol.errors import InvalidSpec

T = TypeVar("T")


def engine_init(args) -> int:
    from engine_lib import engine_key, pki
    from engine_lib.config import EngineConfig
    from engine_lib.store import Store

    config = EngineConfig.resolve(args.engine_dir, args.db_url)
    config.make_private()
    # Also the upgrade step: an engine certificate without the engine profile is re-issued.
    created = pki.init_ca(str(config.pki_dir))
    print(f"CA, engine certificate and CRL in {config.pki_dir}: "
          f"{'created or upgraded' if created else 'kept'}")
    if args.api_address:
        issued = pki.ensure_api_certificate(str(config.pki_dir), args.api_address)
        print(f"API certificate for {', '.join(args.api_address)}: "
              f"{'issued' if issued else 'kept'}")
    # The key the engine reaches hosts with (reinstall, soft fencing); never replaced.
    key_created = engine_key.ensure(config.engine_dir)
    print(f"engine SSH key {engine_key.private_key(config.engine_dir)}: "
          f"{'created' if key_created else 'kept'} (public half: `kestrel engine ssh-key`)")
    store = Store(config.db_url)
    store.upgrade()
    store.close()
    print(f"database schema up to date: {_redact(config.db_url)}")
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def engine_ssh_key(args) -> int:
    """Print the engine's public SSH key: the line hosts authorize for root."""
    from engine_lib import engine_key
    from engine_lib.config import EngineConfig

    print(engine_key.public_key(EngineConfig.resolve(args.engine_dir, args.db_url).engine_dir))
    return 0


def engine_sign_csr(args) -> int:
    from engine_lib import pki
    from engine_lib.config import EngineConfig

    config = EngineConfig.resolve(args.engine_dir, args.db_url)
    cert = pki.sign_csr(str(config.pki_dir), Path(args.csr).read_bytes(), args.name, args.address,
                        args.profile)
    Path(args.out).write_bytes(cert)
    print(f"signed {args.profile} certificate for {args.name} written to {args.out}")
    return 0


def engine_run(args) -> int:
    """Run the engine loop (engine_lib.loop.runner), in the foreground or as a daemon."""
    from engine_lib.broker import client_context
    from engine_lib.config import EngineConfig
    from engine_lib.loop import runner
    from engine_lib.loop.monitoring import Intervals

    if args.balance_max_migrations < 1:
        raise InvalidSpec("--balance-max-migrations", "must be at least 1")
    settings = runner.Settings(
        intervals=Intervals(args.host_interval, args.vm_interval, args.non_responsive_after),
        balance_interval_s=args.balance_interval,
        balance_max_migrations=args.balance_max_migrations,
        ha=not args.no_ha, ssh_key=args.ssh_key,
        power_saving_interval_s=args.power_saving_interval)

    def prepare() -> None:
        # Fail here, before any fork: no TLS material to reach agents with, or a
        # database that cannot be reached or upgraded.
        client_context(str(EngineConfig.resolve(args.engine_dir, args.db_url).pki_dir))
        open_engine(args).close()

    def main(_: None, ready: Callable[[], None]) -> None:
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        with open_engine(args) as engine:
            ready()
            runner.run(engine, settings, stop)

    return run_service(args, "the engine loop", "engine.log", prepare, main)


def run_service(args, what: str, log_name: str, prepare: Callable[[], T],
                main: Callable[[T, Callable[[], None]], None],
                release: Callable[[T], None] = lambda _: None) -> int:
    """A long-running engine command in the foreground or, with --daemon, as a daemon.

    ``args`` carries --engine-dir, --daemon, --pidfile and --log-file
    (``service_options``). ``prepare`` runs before the fork, so what the operator
    must see (no CA, no database, a port in use) fails the launching command;
    ``release`` drops in the launching process what ``prepare`` holds (a listening
    socket). ``main`` serves and calls its ``ready`` once it does.
    """
    from engine_lib.config import EngineConfig
    from engine_lib.protocol import daemon

    if args.daemon and not args.pidfile:
        raise InvalidSpec("--pidfile", "is required with --daemon")
    lock_fd = daemon.lock_pidfile(args.pidfile, what) if args.pidfile else None
    try:
        prepared = prepare()
    except BaseException:
        if lock_fd is not None:  # refused before it ran: leave no pidfile behind
            os.unlink(args.pidfile)
            os.close(lock_fd)
        raise
    ready_fd = (daemon.daemonize(lock_fd, what.removeprefix("the "), lambda: release(prepared))
                if args.daemon else None)
    if args.daemon and ready_fd is None:
        return 0  # the launching process: the daemon runs
    log_file = args.log_file
    if args.daemon and not log_file:
        log_file = str(EngineConfig.resolve(args.engine_dir, args.db_url).engine_dir / log_name)
    daemon.setup_logging(log_file)
    ready = False

    def report_ready() -> None:
        nonlocal ready
        ready = True
        daemon.report_ready(ready_fd, None)

    try:
        if lock_fd is not None:
            daemon.write_pid(lock_fd)
        main(prepared, report_ready)
    except Exception as exc:
        if not ready:  # the launching command fails with it, not a bare "died"
            daemon.report_ready(ready_fd, str(exc) or type(exc).__name__)
        raise
    finally:
        if lock_fd is not None:
            os.unlink(args.pidfile)
            os.close(lock_fd)
    return 0


def service_options(parser, what: str, log_name: str) -> None:
    """--daemon, --pidfile and --log-file of a command run by ``run_service``."""
    parser.add_argument("--daemon", action="store_true", help="detach (needs --pidfile)")
    parser.add_argument("--pidfile", help=f"lock file holding {what}'s PID")
    parser.add_argument("--log-file", help=f"default: stderr; {log_name} in the engine "
                        "directory with --daemon")


def engine_serve(args) -> int:
    """Serve the engine's REST API over HTTPS until SIGTERM or SIGINT."""
    import socket

    from engine_lib.api import serve
    from engine_lib.config import EngineConfig
    from engine_lib.protocol.errors import KestrelError

    settings = serve.Settings(bind=args.bind, port=args.port, addresses=tuple(args.address),
                              workers_threads=args.workers_threads, max_body=args.max_body)

    def prepare() -> socket.socket:
        # Before any fork: bad settings, no CA, no database or a port in use fail
        # the launching command.
        settings.check()
        serve.certificate(EngineConfig.resolve(args.engine_dir, args.db_url).pki_dir,
                          settings.addresses)
        open_engine(args).close()
        try:
            return serve.listen(settings.bind, settings.port)
        except OSError as exc:
            raise KestrelError(f"cannot listen on {settings.bind}:{settings.port}: "
                               f"{exc.strerror}", field="port") from None

    def main(listener: socket.socket, ready: Callable[[], None]) -> None:
        with open_engine(args) as engine:
            server = serve.server(engine, settings)
            serve.settle_gc()
            # uvicorn shuts down on SIGTERM/SIGINT, then raises the signal again under
            # the handler it found: a no-op one lets run_service remove the pidfile.
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: None)
            ready()
            server.run(sockets=[listener])

    return run_service(args, "the engine API", "api.log", prepare, main,
                       release=lambda listener: listener.close())


def events(args) -> int:
    with open_engine(args) as engine:
        entries = engine.events.info(entity_type=args.type, entity_name=args.name,
                                     user=args.user, limit=args.limit)
    if args.json:
        print_json(entries)
        return 0
    for entry in entries:
        print(f"{entry['time'][:19]} {entry['severity']:7} {entry['user'] or '-':16} "
              f"{entry['entity_type']:7} {entry['entity_name']:16} {entry['message']}")
    return 0
