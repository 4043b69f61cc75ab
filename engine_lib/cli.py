"""The ``kestrel`` command: engine, agent, VMs and the test lab.

Each subcommand imports what it needs when it runs, so ``kestrel agent run``
on a host loads only the agent (standard library and libvirt).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from engine_lib.protocol.errors import InvalidSpec, KestrelError


def _engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine-dir", help="engine state directory "
                        "(default: $KESTREL_ENGINE_DIR or /var/lib/kestrel/engine)")
    parser.add_argument("--db-url", help="database URL (default: $KESTREL_DB_URL or a SQLite "
                        "file in the engine directory)")


def _open_engine(args):
    from engine_lib.engine import Engine

    return Engine.open(engine_dir=args.engine_dir, db_url=args.db_url)


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# -- engine ----------------------------------------------------------------------------------

def engine_init(args) -> int:
    from engine_lib import pki
    from engine_lib.config import EngineConfig
    from engine_lib.store import Store

    config = EngineConfig.resolve(args.engine_dir, args.db_url)
    created = pki.init_ca(str(config.pki_dir))
    print(f"CA and engine certificate in {config.pki_dir}: {'created' if created else 'kept'}")
    from engine_lib import engine_key

    # Issue 9: the key the engine reaches hosts with (reinstall, soft fencing); never replaced.
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
    cert = pki.sign_csr(str(config.pki_dir), Path(args.csr).read_bytes(), args.name, args.address)
    Path(args.out).write_bytes(cert)
    print(f"signed certificate for {args.name} written to {args.out}")
    return 0


def engine_run(args) -> int:
    import signal
    import threading

    from engine_lib import daemon
    from engine_lib.broker import client_context
    from engine_lib.config import EngineConfig
    from engine_lib.loop.event_follower import EventFollower
    from engine_lib.loop.monitoring import Intervals, Monitor

    if args.daemon and not args.pidfile:
        raise InvalidSpec("--pidfile", "is required with --daemon")
    intervals = Intervals(args.host_interval, args.vm_interval, args.non_responsive_after)
    if args.balance_max_migrations < 1:
        raise InvalidSpec("--balance-max-migrations", "must be at least 1")
    lock_fd = daemon.lock_pidfile(args.pidfile, "the engine loop") if args.pidfile else None
    # Fail here, before any fork: no TLS material to reach agents with, or a
    # database that cannot be reached or upgraded.
    client_context(str(EngineConfig.resolve(args.engine_dir, args.db_url).pki_dir))
    _open_engine(args).close()
    ready_fd = daemon.daemonize(lock_fd, "engine loop") if args.daemon else None
    if args.daemon and ready_fd is None:
        return 0  # the launching process: the loop runs
    log_file = args.log_file
    if args.daemon and not log_file:
        log_file = str(EngineConfig.resolve(args.engine_dir, args.db_url).engine_dir / "engine.log")
    daemon.setup_logging(log_file)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        if lock_fd is not None:
            daemon.write_pid(lock_fd)
        with _open_engine(args) as engine:
            daemon.report_ready(ready_fd, None)
            # Status changes the agents push reach the database at once; the
            # Monitor's polls stay the reference (and own host status).
            follower = threading.Thread(target=EventFollower(engine).run, args=(stop,),
                                        name="event-follower", daemon=True)
            follower.start()
            if args.balance_interval > 0:
                from engine_lib.loop.balancer import Balancer, Settings

                # Issue 7: each cluster's balancing policy, a few migrations per round.
                threading.Thread(target=Balancer(engine, Settings(
                    args.balance_interval, args.balance_max_migrations)).run, args=(stop,),
                    name="balancer", daemon=True).start()
            monitor = Monitor(engine, intervals)
            # A migration whose caller died (a module run killed mid-way) would leave
            # its VM MigratingFrom, which the Monitor does not touch: settle it here.
            monitor.after_cycle.append(engine.migrations.active)
            if not args.no_ha:
                from engine_lib.loop.ha import HighAvailability

                # Issue 8: fence NonResponsive hosts, restart their HA VMs elsewhere.
                monitor.after_cycle.append(HighAvailability(engine, args.ssh_key).cycle)
            monitor.run(stop)
            follower.join(5)
    finally:
        if lock_fd is not None:
            os.unlink(args.pidfile)
            os.close(lock_fd)
    return 0


def events(args) -> int:
    with _open_engine(args) as engine:
        entries = engine.events.info(entity_type=args.type, entity_name=args.name,
                                     limit=args.limit)
    if args.json:
        _print_json(entries)
        return 0
    for entry in entries:
        print(f"{entry['time'][:19]} {entry['severity']:7} {entry['entity_type']:7} "
              f"{entry['entity_name']:16} {entry['message']}")
    return 0


# -- agent -----------------------------------------------------------------------------------

def agent_run(args) -> int:
    from engine_lib.agent import main as agent_main

    return agent_main(args.config, daemon=args.daemon, pidfile=args.pidfile,
                      log_file=args.log_file) or 0


def agent_wheel(args) -> int:
    from engine_lib.wheel import build_agent_wheel

    print(build_agent_wheel(args.out))
    return 0


# -- clusters, hosts, VMs --------------------------------------------------------------------

def cluster_list(args) -> int:
    with _open_engine(args) as engine:
        _print_json(engine.clusters.info())
    return 0


def host_list(args) -> int:
    with _open_engine(args) as engine:
        _print_json(engine.hosts.info(name=args.name, cluster=args.cluster))
    return 0


def host_reinstall(args) -> int:
    """Issue 9: reinstall the engine's agent build on a host over SSH, then activate it."""
    with _open_engine(args) as engine:
        outcome = engine.hosts.reinstall(args.name, force=args.force,
                                         activate=not args.no_activate,
                                         renew_certificate=args.renew_certificate,
                                         timeout=args.timeout)
    _print_json({"changed": outcome.changed, "host": outcome.entity})
    return 0


def vm_list(args) -> int:
    with _open_engine(args) as engine:
        vms = engine.vms.info(name=args.name, cluster=args.cluster, host=args.host)
    if args.json:
        _print_json(vms)
        return 0
    print(f"{'NAME':20} {'STATUS':14} {'HOST':12} {'MEMORY':>8} {'VCPUS':>5}  CLUSTER")
    for vm in vms:
        print(f"{vm['name']:20} {vm['status']:14} {vm['host'] or '-':12} "
              f"{vm['memory_mib']:>6}Mi {vm['vcpus']:>5}  {vm['cluster']}")
    return 0


def vm_xml(args) -> int:
    with _open_engine(args) as engine:
        sys.stdout.write(engine.vms.domain_xml(args.name))
    return 0


def vm_console(args) -> int:
    with _open_engine(args) as engine:
        sys.stdout.write(engine.vms.console(args.name, args.bytes))
    return 0


def vm_migrate(args) -> int:
    """Live-migrate a VM; a progress bar on a terminal, one line per second otherwise."""
    show = _MigrationProgress(sys.stderr)
    with _open_engine(args) as engine:
        outcome = engine.migrations.migrate(
            args.name, host=args.host, policy=args.policy, bandwidth_mbps=args.bandwidth,
            timeout=args.timeout, progress=show)
    show.close()
    result = outcome.entity
    if args.json:
        _print_json(result)
    else:
        downtime = result.get("downtime_ms")
        print(f"VM {result['vm']} {result['status']}: {result['source']} -> "
              f"{result['destination']} in {result['duration_s']:.1f} s, downtime "
              f"{'unknown' if downtime is None else f'{downtime} ms'} (policy "
              f"{result['policy']}, at most {result['policy_limit_ms']} ms)")
    return 0 if result["status"] == "succeeded" else 1


def vm_cancel_migration(args) -> int:
    """Abort a VM's running migration; it keeps running on its source."""
    with _open_engine(args) as engine:
        outcome = engine.migrations.cancel(args.name)
    if outcome.entity is None:
        print(f"VM {args.name} is not migrating", file=sys.stderr)
        return 1
    _print_json(outcome.entity)
    return 0


def vm_migrations(args) -> int:
    with _open_engine(args) as engine:
        _print_json(engine.migrations.history(args.name))
    return 0


class _MigrationProgress:
    """Renders the source agent's progress samples: a bar on a TTY, plain lines otherwise."""

    def __init__(self, stream):
        self.stream = stream
        self.tty = stream.isatty()
        self._last_line = 0.0

    def __call__(self, sample: dict) -> None:
        import time

        total = sample.get("data_total_mib") or 0
        done = sample.get("data_processed_mib") or 0
        remaining = sample.get("data_remaining_mib") or 0
        text = (f"{done:8.1f} MiB sent, {remaining:7.1f} MiB left, iteration "
                f"{sample.get('iteration', 0)}, downtime limit "
                f"{sample.get('downtime_limit_ms', '?')} ms")
        if self.tty:
            share = min(1.0, done / total) if total else 0.0
            bar = "#" * int(share * 30)
            self.stream.write(f"\r[{bar:<30}] {share:4.0%} {text}")
            self.stream.flush()
        elif time.monotonic() - self._last_line >= 1.0:
            self._last_line = time.monotonic()
            self.stream.write(f"migrating: {text}\n")

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


# -- scheduling (offline) --------------------------------------------------------------------

def schedule(args) -> int:
    """Place the VMs of a file on the hosts of another, without an engine; print the decisions."""
    import yaml

    from engine_lib.scheduling import resolve
    from engine_lib.scheduling.simulate import simulate

    def load(path: str | None, field: str):
        if path is None:
            return []
        try:
            return yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise InvalidSpec(field, f"cannot read {path}: {err}") from None

    policy = resolve(args.policy, json.loads(args.properties) if args.properties else None,
                     "policy")
    _print_json({"policy": policy.name, "parameters": policy.params,
                 "placements": simulate(load(args.hosts, "hosts"), load(args.vms, "vms"), policy,
                                        load(args.affinity_groups, "affinity_groups"))})
    return 0


def xml_render(args) -> int:
    """Print the domain XML for a spec file; offline unless a database is named."""
    from engine_lib.services.previews import load_spec, render_spec, render_spec_stored

    spec = load_spec(args.spec)
    if args.engine_dir or args.db_url:
        with _open_engine(args) as engine:
            sys.stdout.write(render_spec_stored(engine.store, spec))
        return 0
    sys.stdout.write(render_spec(spec, args.virt_type))
    return 0


def devices_match(args) -> int:
    """Print how a live domain XML's devices correlate with a VM spec's (JSON)."""
    from engine_lib.services.previews import correlate_spec, load_spec, read_live

    spec, live = load_spec(args.spec), read_live(args.live)
    if args.engine_dir or args.db_url:
        with _open_engine(args) as engine:
            _print_json(correlate_spec(spec, live, engine.store))
        return 0
    _print_json(correlate_spec(spec, live))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kestrel", description="kestrel.virt: the engine, the host agent, VMs and the test lab.")
    groups = parser.add_subparsers(dest="group", required=True)

    def command(group, name, func, help_):
        sub = group.add_parser(name, help=help_, description=help_)
        sub.set_defaults(func=func)
        return sub

    engine = groups.add_parser("engine", help="the engine's CA and database").add_subparsers(
        dest="command", required=True)
    _engine_options(command(engine, "init", engine_init,
                            "create the engine CA and certificate, and the database schema"))
    run_engine = command(engine, "run", engine_run,
                         "run the engine loop: host heartbeats and VM statuses")
    _engine_options(run_engine)
    run_engine.add_argument("--host-interval", type=float, default=3.0, help="seconds (3)")
    run_engine.add_argument("--vm-interval", type=float, default=15.0, help="seconds (15)")
    run_engine.add_argument("--non-responsive-after", type=float, default=60.0,
                            help="seconds a host may stay Connecting before NonResponsive (60)")
    run_engine.add_argument("--ssh-key", help="the engine's SSH key for soft fencing "
                            "(default: ENGINE_DIR/ssh/id_ed25519)")
    run_engine.add_argument("--balance-interval", type=float, default=60.0,
                            help="seconds between balancing rounds; 0 turns balancing off (60)")
    run_engine.add_argument("--balance-max-migrations", type=int, default=1,
                            help="migrations per cluster per balancing round (1)")
    run_engine.add_argument("--no-ha", action="store_true",
                            help="no fencing and no HA restarts (monitoring only)")
    run_engine.add_argument("--daemon", action="store_true", help="detach (needs --pidfile)")
    run_engine.add_argument("--pidfile", help="lock file holding the loop's PID")
    run_engine.add_argument("--log-file", help="default: stderr; engine.log in the engine "
                            "directory with --daemon")
    _engine_options(command(engine, "ssh-key", engine_ssh_key,
                            "print the engine's public SSH key (authorize it for root on hosts)"))
    sign = command(engine, "sign-csr", engine_sign_csr,
                   "sign a host's certificate request with the engine CA")
    _engine_options(sign)
    sign.add_argument("--csr", required=True, help="PEM certificate signing request")
    sign.add_argument("--name", required=True, help="host name (certificate CN)")
    sign.add_argument("--address", action="append", default=[], help="host address (repeatable)")
    sign.add_argument("--out", required=True, help="where to write the signed PEM certificate")

    agent = groups.add_parser("agent", help="the host agent").add_subparsers(
        dest="command", required=True)
    run = command(agent, "run", agent_run, "run the host agent")
    run.add_argument("--config", default="/etc/kestrel/agent.conf")
    run.add_argument("--daemon", action="store_true", help="detach and write a pidfile")
    run.add_argument("--pidfile", default="/run/kestrel/agent.pid")
    run.add_argument("--log-file", default=None)
    wheel = command(agent, "wheel", agent_wheel,
                    "build a wheel of this engine_lib for installing the agent on hosts")
    wheel.add_argument("--out", required=True, help="directory for the wheel")

    for group_name, func, help_ in (("cluster", cluster_list, "clusters"),
                                    ("host", host_list, "hosts")):
        sub = groups.add_parser(group_name, help=help_).add_subparsers(dest="command", required=True)
        lister = command(sub, "list", func, f"list {help_} as JSON")
        _engine_options(lister)
        if group_name == "host":
            lister.add_argument("--name")
            lister.add_argument("--cluster")
            reinstall = command(sub, "reinstall", host_reinstall,
                                "install the engine's agent build on a host again over SSH "
                                "(it goes to maintenance first), then activate it; nothing "
                                "happens when it already runs that build")
            _engine_options(reinstall)
            reinstall.add_argument("name")
            reinstall.add_argument("--force", action="store_true",
                                   help="reinstall even when the host runs the engine's build")
            reinstall.add_argument("--no-activate", action="store_true",
                                   help="leave the host in Maintenance afterwards")
            reinstall.add_argument("--renew-certificate", action="store_true",
                                   help="re-enroll the agent certificate even if still valid")
            reinstall.add_argument("--timeout", type=float, default=600.0,
                                   help="seconds for moving its VMs away (600)")

    audit_log = groups.add_parser("events", help="the audit log (oldest first)")
    audit_log.set_defaults(func=events)
    _engine_options(audit_log)
    audit_log.add_argument("--type", choices=("cluster", "host", "vm"))
    audit_log.add_argument("--name", help="entity name")
    audit_log.add_argument("--limit", type=int, default=50)
    audit_log.add_argument("--json", action="store_true")

    vm = groups.add_parser("vm", help="virtual machines").add_subparsers(
        dest="command", required=True)
    lister = command(vm, "list", vm_list, "list VMs")
    _engine_options(lister)
    for option in ("--name", "--cluster", "--host"):
        lister.add_argument(option)
    lister.add_argument("--json", action="store_true")
    xml = command(vm, "xml", vm_xml, "print the domain XML the engine renders for a VM")
    console = command(vm, "console", vm_console, "print the tail of a VM's serial console")
    console.add_argument("--bytes", type=int, default=8192)
    migrate = command(vm, "migrate", vm_migrate, "move a running VM live to another host")
    migrate.add_argument("--host", help="destination (default: the scheduler picks)")
    migrate.add_argument("--policy", choices=("minimal_downtime", "post_copy",
                                              "suspend_workload"),
                         help="convergence policy (default: the cluster's)")
    migrate.add_argument("--bandwidth", type=int, help="limit in Mbps (default: the cluster's)")
    migrate.add_argument("--timeout", type=float, default=600.0)
    migrate.add_argument("--json", action="store_true")
    cancel = command(vm, "cancel-migration", vm_cancel_migration,
                     "abort a VM's running migration (it stays on its source)")
    history = command(vm, "migrations", vm_migrations, "every migration attempt of a VM")
    for sub in (xml, console, migrate, cancel, history):
        _engine_options(sub)
        sub.add_argument("name")

    sched = groups.add_parser("schedule", help="place VMs on hosts offline and explain each decision",
                              description="Place the VMs of VMS.yaml, in order, on the hosts of "
                              "HOSTS.yaml with a cluster scheduling policy; print JSON: each VM's "
                              "host (or null) and the explanation.")
    sched.set_defaults(func=schedule)
    sched.add_argument("--hosts", required=True, help="YAML list of hosts")
    sched.add_argument("--vms", required=True, help="YAML list of VM specs")
    sched.add_argument("--policy", default="none", help="scheduling policy (default: none)")
    sched.add_argument("--properties", help="policy parameters as a JSON object")
    sched.add_argument("--affinity-groups", help="YAML list of affinity groups")

    xmlgroup = groups.add_parser("xml", help="domain XML").add_subparsers(
        dest="command", required=True)
    xml_render_cmd = command(xmlgroup, "render", xml_render,
                             "print the domain XML for a VM spec file (YAML or JSON)")
    xml_render_cmd.add_argument("spec", help="VM spec file, as docs/vm-spec.md describes")
    xml_render_cmd.add_argument("--virt-type", choices=("kvm", "qemu"), default="kvm",
                                help="the cluster's virt_type when rendering without a database")
    _engine_options(xml_render_cmd)

    devgroup = groups.add_parser("devices", help="device matching").add_subparsers(
        dest="command", required=True)
    devices_match_cmd = command(devgroup, "match", devices_match,
                                "correlate a live domain XML's devices with a VM spec's: "
                                "matched, unmanaged_new, unplugged, each with its reason")
    devices_match_cmd.add_argument("--spec", required=True,
                                   help="VM spec file (YAML or JSON), as the vm module takes")
    devices_match_cmd.add_argument("--live", required=True,
                                   help="live domain XML (virsh dumpxml, or the agent's)")
    _engine_options(devices_match_cmd)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InvalidSpec as err:
        print(f"kestrel: invalid input: {err.message}", file=sys.stderr)
        return 2
    except KestrelError as err:
        print(f"kestrel: {err.code}: {err.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
