"""The ``kestrel`` command: the engine, its clusters, hosts and VMs, and offline tools.

One module per family of subcommands: engine (init, ssh-key, sign-csr, run, events),
entities (cluster, host, vm), stats (a host's or VM's figures; --plot draws them),
users (user, token: access to the engine API), offline (schedule, xml render, devices
match) and agent (the agent's wheel). The agent itself
runs as ``kestrel-agent``; the test lab as ``kestrel-lab``.
"""

from __future__ import annotations

import argparse
import sys

# Subcommands import what they need inside their function, not here: ``kestrel`` starts fast,
# and an engine host without an optional dependency still runs every command that needs none.
from engine_lib.cli.agent import agent_wheel
from engine_lib.cli.backups import add_parsers as add_backup_parsers
from engine_lib.cli.common import engine_options
from engine_lib.cli.disks import disk_download, disk_list, disk_upload
from engine_lib.cli.engine import (
    engine_init,
    engine_run,
    engine_serve,
    engine_sign_csr,
    engine_ssh_key,
    events,
    service_options,
)
from engine_lib.cli.entities import (
    cluster_list,
    host_list,
    host_reinstall,
    lun_add,
    lun_list,
    lun_remove,
    vm_cancel_migration,
    vm_console,
    vm_list,
    vm_migrate,
    vm_migrations,
    vm_xml,
)
from engine_lib.cli.offline import devices_match, schedule, xml_render
from engine_lib.cli.snapshots import add_parsers as add_snapshot_parsers
from engine_lib.cli.stats import stats
from engine_lib.cli.templates import template_create, template_list, template_remove
from engine_lib.cli.users import add_parsers as add_access_parsers
from engine_lib.protocol.errors import InvalidSpec, KestrelError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kestrel", description="kestrel.virt: the engine, its hosts and VMs.")
    groups = parser.add_subparsers(dest="group", required=True)

    def command(group, name, func, help_):
        sub = group.add_parser(name, help=help_, description=help_)
        sub.set_defaults(func=func)
        return sub

    engine = groups.add_parser("engine", help="the engine's CA and database").add_subparsers(
        dest="command", required=True)
    init = command(engine, "init", engine_init,
                   "create the engine CA and certificate, and the database schema")
    engine_options(init)
    init.add_argument("--api-address", action="append", default=[], metavar="NAME",
                      help="also issue the REST API's certificate for this name or IP "
                      "(repeatable; `engine serve --address` does the same)")
    run_engine = command(engine, "run", engine_run,
                         "run the engine loop: host heartbeats and VM statuses")
    engine_options(run_engine)
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
    run_engine.add_argument("--power-saving-interval", type=float, default=60.0,
                            help="seconds between power saving rounds (hosts powered down and "
                            "up by the power_saving policy); 0 turns it off (60)")
    run_engine.add_argument("--no-ha", action="store_true",
                            help="no fencing and no HA restarts (monitoring only)")
    service_options(run_engine, "the loop", "engine.log")
    serve = command(engine, "serve", engine_serve,
                    "serve the engine's REST API over HTTPS (certificate from the engine CA)")
    engine_options(serve)
    serve.add_argument("--bind", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    serve.add_argument("--port", type=int, default=8443, help="TCP port (8443)")
    serve.add_argument("--address", action="append", default=[], metavar="NAME",
                       help="a name or IP clients reach the API at: the certificate's SANs "
                       "(repeatable; default: the existing certificate's, else this host's FQDN)")
    serve.add_argument("--workers-threads", type=int, default=8,
                       help="long operations run at once; more get 503 Busy (8)")
    serve.add_argument("--max-body", type=int, default=1048576,
                       help="largest JSON request body in bytes (1048576)")
    service_options(serve, "the API", "api.log")
    engine_options(command(engine, "ssh-key", engine_ssh_key,
                           "print the engine's public SSH key (authorize it for root on hosts)"))
    sign = command(engine, "sign-csr", engine_sign_csr,
                   "sign a host's certificate request with the engine CA")
    engine_options(sign)
    sign.add_argument("--csr", required=True, help="PEM certificate signing request")
    sign.add_argument("--name", required=True, help="host name (certificate CN)")
    sign.add_argument("--address", action="append", default=[], help="host address (repeatable)")
    sign.add_argument("--out", required=True, help="where to write the signed PEM certificate")
    sign.add_argument("--profile", choices=("agent", "libvirt", "migration"), default="agent",
                      help="what the certificate is for: the host agent (serverAuth), "
                      "libvirtd's qemu+tls (serverAuth, clientAuth) or QEMU's migration "
                      "stream (serverAuth, clientAuth) (agent)")

    agent = groups.add_parser("agent", help="the host agent").add_subparsers(
        dest="command", required=True)
    wheel = command(agent, "wheel", agent_wheel,
                    "build a wheel of this engine_lib for installing the agent on hosts")
    wheel.add_argument("--out", required=True, help="directory for the wheel")

    for group_name, func, help_ in (("cluster", cluster_list, "clusters"),
                                    ("host", host_list, "hosts")):
        sub = groups.add_parser(group_name, help=help_).add_subparsers(dest="command",
                                                                       required=True)
        lister = command(sub, "list", func, f"list {help_} as JSON")
        engine_options(lister)
        if group_name == "host":
            lister.add_argument("--name")
            lister.add_argument("--cluster")
            reinstall = command(sub, "reinstall", host_reinstall,
                                "install the engine's agent build on a host again over SSH "
                                "(it goes to maintenance first), then activate it; nothing "
                                "happens when it already runs that build")
            engine_options(reinstall)
            reinstall.add_argument("name")
            reinstall.add_argument("--force", action="store_true",
                                   help="reinstall even when the host runs the engine's build")
            reinstall.add_argument("--no-activate", action="store_true",
                                   help="leave the host in Maintenance afterwards")
            reinstall.add_argument("--renew-certificate", action="store_true",
                                   help="a new agent certificate for its key, even if the "
                                   "current one is still valid")
            reinstall.add_argument("--enroll-certificate", action="store_true",
                                   help="re-key: a new key pair on the host and a certificate "
                                   "for it")
            reinstall.add_argument("--ssh-host-key", action="append", metavar="'TYPE BASE64'",
                                   help="the host's new SSH host key, when it changed on "
                                   "purpose (repeatable; replaces the recorded ones)")
            reinstall.add_argument("--timeout", type=float, default=600.0,
                                   help="seconds for moving its VMs away (600)")

    lun = groups.add_parser("lun", help="LUNs VM disks may use (registered by an "
                            "administrator)").add_subparsers(dest="command", required=True)
    add = command(lun, "add", lun_add, "register a block device for VM disks to name "
                  "(lun: NAME or WWID); the agent uses nothing else as a LUN")
    add.add_argument("name")
    add.add_argument("--path", required=True,
                     help="the device on every host, e.g. /dev/disk/by-id/wwn-0x...")
    add.add_argument("--wwid", help="the LUN's WWID, which disks may name instead")
    add.add_argument("--description")
    remove = command(lun, "remove", lun_remove, "unregister a LUN no VM disk uses")
    remove.add_argument("name")
    lun_lister = command(lun, "list", lun_list, "list registered LUNs as JSON")
    lun_lister.add_argument("--name")
    for sub in (add, remove, lun_lister):
        engine_options(sub)

    template = groups.add_parser("template", help="VM templates and their versions"
                                 ).add_subparsers(dest="command", required=True)
    t_list = command(template, "list", template_list, "list template versions as JSON")
    t_list.add_argument("--name")
    t_list.add_argument("--version", type=int)
    t_create = command(template, "create", template_create,
                       "make a template version from a stopped VM (its disks copied) or "
                       "from a floating disk; a progress bar while disks are copied")
    t_create.add_argument("name")
    source = t_create.add_mutually_exclusive_group(required=True)
    source.add_argument("--vm", help="the stopped VM to copy")
    source.add_argument("--disk", help="a floating disk that becomes the template's")
    t_create.add_argument("--cluster", help="required with --disk")
    t_create.add_argument("--version", type=int, help="the new version's number (the next)")
    t_create.add_argument("--version-name")
    t_create.add_argument("--description")
    t_create.add_argument("--seal", action="store_true", help="run virt-sysprep on its boot disk")
    t_create.add_argument("--timeout", type=float, help="seconds per disk copy (no limit)")
    t_remove = command(template, "remove", template_remove,
                       "remove a template version (or every version) with its volumes; "
                       "refused while thin VMs use it")
    t_remove.add_argument("name")
    t_remove.add_argument("--version", type=int)
    t_remove.add_argument("--version-name")
    for sub in (t_list, t_create, t_remove):
        engine_options(sub)

    add_snapshot_parsers(groups, command, engine_options)

    disk = groups.add_parser("disk", help="floating disks and ISOs: upload, download, list"
                             ).add_subparsers(dest="command", required=True)
    upload = command(disk, "upload", disk_upload, "upload an image (a file here, or a URL "
                     "the host downloads) as a floating disk, with a progress bar")
    upload.add_argument("name")
    source = upload.add_mutually_exclusive_group(required=True)
    source.add_argument("--path", help="an image file on this machine")
    source.add_argument("--url", help="an http(s) URL the host downloads")
    upload.add_argument("--storage-domain", required=True)
    upload.add_argument("--image-format", choices=("qcow2", "raw", "vmdk", "vdi", "vhdx"),
                        help="the image's format (default: detected)")
    upload.add_argument("--format", choices=("qcow2", "raw"),
                        help="the volume's format (default qcow2, raw for an ISO)")
    upload.add_argument("--content-type", choices=("data", "iso"), default="data")
    upload.add_argument("--checksum", help="sha256:<hex> the image must have")
    upload.add_argument("--size", help="grow the volume to this size (e.g. 20GiB)")
    upload.add_argument("--force", action="store_true",
                        help="replace a floating disk of other content")
    upload.add_argument("--timeout", type=float,
                        help="seconds the host may take to check and convert it")
    download = command(disk, "download", disk_download, "write a floating disk to a file "
                       "here (renamed into place once its sha256 is checked)")
    download.add_argument("name")
    download.add_argument("path")
    download.add_argument("--format", choices=("qcow2", "raw"))
    disk_lister = command(disk, "list", disk_list, "list floating disks and ISOs as JSON")
    for sub in (upload, download, disk_lister):
        engine_options(sub)

    audit_log = groups.add_parser("events", help="the audit log (oldest first)")
    audit_log.set_defaults(func=events)
    engine_options(audit_log)
    audit_log.add_argument("--type", choices=("cluster", "host", "vm"))
    audit_log.add_argument("--name", help="entity name")
    audit_log.add_argument("--user", help='who acted: a user, "engine" (the engine loop) or '
                           '"local:<login>"')
    audit_log.add_argument("--limit", type=int, default=50)
    audit_log.add_argument("--json", action="store_true")

    stats_cmd = groups.add_parser(
        "stats", help="a host's or VM's current figures and their history",
        description="A host's (or with --vm a VM's) current figures and their history over a "
        "window (any two of --since, --until and --period; by default the last 24h): a table, "
        "JSON, or a PNG chart of CPU and memory.")
    stats_cmd.set_defaults(func=stats)
    engine_options(stats_cmd)
    stats_cmd.add_argument("name", help="the host's name (the VM's with --vm)")
    stats_cmd.add_argument("--vm", action="store_true", help="NAME is a VM")
    stats_cmd.add_argument("--period", help="1h, 24h, 7d, 30d, 1y... (default 24h)")
    stats_cmd.add_argument("--since", help="ISO 8601 start (UTC unless it names a zone)")
    stats_cmd.add_argument("--until", help="ISO 8601 end (default: now)")
    stats_cmd.add_argument("--resolution", help="raw (a minute), hour or day (default: the "
                           "finest kept for the window: raw up to a day, hour up to 30 days)")
    output = stats_cmd.add_mutually_exclusive_group()
    output.add_argument("--plot", metavar="FILE.png",
                        help="draw CPU %% and memory over the window into this PNG "
                        "(needs matplotlib: the plot extra)")
    output.add_argument("--json", action="store_true")

    vm = groups.add_parser("vm", help="virtual machines").add_subparsers(
        dest="command", required=True)
    lister = command(vm, "list", vm_list, "list VMs")
    engine_options(lister)
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
        engine_options(sub)
        sub.add_argument("name")

    sched = groups.add_parser("schedule",
                              help="place VMs on hosts offline and explain each decision",
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
    engine_options(xml_render_cmd)

    devgroup = groups.add_parser("devices", help="device matching").add_subparsers(
        dest="command", required=True)
    devices_match_cmd = command(devgroup, "match", devices_match,
                                "correlate a live domain XML's devices with a VM spec's: "
                                "matched, unmanaged_new, unplugged, each with its reason")
    devices_match_cmd.add_argument("--spec", required=True,
                                   help="VM spec file (YAML or JSON), as the vm module takes")
    devices_match_cmd.add_argument("--live", required=True,
                                   help="live domain XML (virsh dumpxml, or the agent's)")
    engine_options(devices_match_cmd)

    add_access_parsers(groups, command, engine_options)
    add_backup_parsers(groups, command, engine_options)
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
