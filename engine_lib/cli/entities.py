"""``kestrel cluster|host|lun|vm``: the engine's clusters, hosts, registered LUNs and VMs."""

from __future__ import annotations

import sys

from engine_lib.cli.common import open_engine, print_json


def cluster_list(args) -> int:
    with open_engine(args) as engine:
        print_json(engine.clusters.info())
    return 0


def host_list(args) -> int:
    with open_engine(args) as engine:
        print_json(engine.hosts.info(name=args.name, cluster=args.cluster))
    return 0


def host_reinstall(args) -> int:
    """Reinstall the engine's agent build on a host over SSH, then activate it."""
    with open_engine(args) as engine:
        outcome = engine.hosts.reinstall(args.name, force=args.force,
                                         activate=not args.no_activate,
                                         renew_certificate=args.renew_certificate,
                                         enroll_certificate=args.enroll_certificate,
                                         ssh_host_keys=args.ssh_host_key,
                                         timeout=args.timeout)
    print_json({"changed": outcome.changed, "host": outcome.entity})
    return 0


def lun_add(args) -> int:
    """Register a block device VM disks may name (an administrator's decision)."""
    with open_engine(args) as engine:
        outcome = engine.luns.register(args.name, args.path, wwid=args.wwid or "",
                                       description=args.description or "")
    print_json({"changed": outcome.changed, "lun": outcome.entity})
    return 0


def lun_remove(args) -> int:
    with open_engine(args) as engine:
        outcome = engine.luns.remove(args.name)
    print_json({"changed": outcome.changed})
    return 0


def lun_list(args) -> int:
    with open_engine(args) as engine:
        print_json(engine.luns.info(args.name))
    return 0


def vm_list(args) -> int:
    with open_engine(args) as engine:
        vms = engine.vms.info(name=args.name, cluster=args.cluster, host=args.host)
    if args.json:
        print_json(vms)
        return 0
    print(f"{'NAME':20} {'STATUS':14} {'HOST':12} {'MEMORY':>8} {'VCPUS':>5}  CLUSTER")
    for vm in vms:
        print(f"{vm['name']:20} {vm['status']:14} {vm['host'] or '-':12} "
              f"{vm['memory_mib']:>6}Mi {vm['vcpus']:>5}  {vm['cluster']}")
    return 0


def vm_xml(args) -> int:
    with open_engine(args) as engine:
        sys.stdout.write(engine.vms.domain_xml(args.name))
    return 0


def vm_console(args) -> int:
    with open_engine(args) as engine:
        sys.stdout.write(engine.vms.console(args.name, args.bytes))
    return 0


def vm_migrate(args) -> int:
    """Live-migrate a VM; a progress bar on a terminal, one line per second otherwise."""
    show = MigrationProgress(sys.stderr)
    with open_engine(args) as engine:
        outcome = engine.migrations.migrate(
            args.name, host=args.host, policy=args.policy, bandwidth_mbps=args.bandwidth,
            timeout=args.timeout, progress=show)
    show.close()
    result = outcome.entity
    if args.json:
        print_json(result)
    else:
        downtime = result.get("downtime_ms")
        print(f"VM {result['vm']} {result['status']}: {result['source']} -> "
              f"{result['destination']} in {result['duration_s']:.1f} s, downtime "
              f"{'unknown' if downtime is None else f'{downtime} ms'} (policy "
              f"{result['policy']}, at most {result['policy_limit_ms']} ms)")
    return 0 if result["status"] == "succeeded" else 1


def vm_cancel_migration(args) -> int:
    """Abort a VM's running migration; it keeps running on its source."""
    with open_engine(args) as engine:
        outcome = engine.migrations.cancel(args.name)
    if outcome.entity is None:
        print(f"VM {args.name} is not migrating", file=sys.stderr)
        return 1
    print_json(outcome.entity)
    return 0


def vm_migrations(args) -> int:
    with open_engine(args) as engine:
        print_json(engine.migrations.history(args.name))
    return 0


class MigrationProgress:
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
