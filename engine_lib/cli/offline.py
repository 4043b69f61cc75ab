"""``kestrel schedule|xml render|devices match``: answers from files, no engine needed
(``xml render`` and ``devices match`` use the engine's database when one is named)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine_lib.cli.common import open_engine, print_json
from engine_lib.protocol.errors import InvalidSpec


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
    print_json({"policy": policy.name, "parameters": policy.params,
                "placements": simulate(load(args.hosts, "hosts"), load(args.vms, "vms"), policy,
                                       load(args.affinity_groups, "affinity_groups"))})
    return 0


def xml_render(args) -> int:
    """Print the domain XML for a spec file; offline unless a database is named."""
    from engine_lib.services.previews import load_spec, render_spec, render_spec_stored

    spec = load_spec(args.spec)
    if args.engine_dir or args.db_url:
        with open_engine(args) as engine:
            sys.stdout.write(render_spec_stored(engine.store, spec))
        return 0
    sys.stdout.write(render_spec(spec, args.virt_type))
    return 0


def devices_match(args) -> int:
    """Print how a live domain XML's devices correlate with a VM spec's (JSON)."""
    from engine_lib.services.previews import correlate_spec, load_spec, read_live

    spec, live = load_spec(args.spec), read_live(args.live)
    if args.engine_dir or args.db_url:
        with open_engine(args) as engine:
            print_json(correlate_spec(spec, live, engine.store))
        return 0
    print_json(correlate_spec(spec, live))
    return 0
