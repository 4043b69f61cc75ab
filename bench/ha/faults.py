"""make ha-faults: real faults on the lab, HA restarts timed, duplicate copies counted.

Runs the fault scenarios of tests/system/test_ha.py for real (``--rounds`` times,
default 1; the lab lock is the Makefile's): a killed host with three HA VMs and two
ordinary ones, a cut link (no restart until fenced), a killed agent (no restart),
an engine loop killed in the middle of the restarts. Each scenario's sampler asks
every lab host's libvirtd which VMs it runs, every 0.3 s, for the whole fault.

Printed: time from host death to the HA VMs Up (kill_host; and the other
scenarios' times), set beside the reference the engine cannot beat — the
detection timeout it must wait before it may act at all (NonResponsive after
3 s); and the duplicate running copies seen across all fault runs (must be 0).
The last line is one JSON object: duplicates, ha_restart_s, fault_runs, ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "system"))

from test_ha import NON_RESPONSIVE_AFTER_S


def run_round(report: str) -> int:
    env = {**os.environ, "KESTREL_HA_REPORT": report}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "system" / "test_ha.py")],
                          cwd=ROOT, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("HA_ROUNDS", "1")))
    args = parser.parse_args()
    failed_rounds = 0
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "ha.jsonl")
        for number in range(1, args.rounds + 1):
            print(f"==> round {number}/{args.rounds}: four fault scenarios on the lab", flush=True)
            failed_rounds += run_round(report) != 0
        runs = [json.loads(line) for line in Path(report).read_text().splitlines()] \
            if os.path.exists(report) else []
    by = {}
    for run in runs:
        by.setdefault(run["scenario"], []).append(run)
    duplicates = sum(run["duplicates"] for run in runs)

    def median(scenario: str) -> float | None:
        times = [run["ha_restart_s"] for run in by.get(scenario, []) if "ha_restart_s" in run]
        return round(statistics.median(times), 2) if times else None

    print()
    print(f"fault runs completed: {len(runs)} "
          f"(rounds {args.rounds}, failed rounds {failed_rounds})")
    print(f"reference: NonResponsive after {NON_RESPONSIVE_AFTER_S:.1f} s of silence "
          "(the engine may not act sooner)")
    for scenario, label in (("kill_host", "host killed -> HA VMs Up elsewhere"),
                            ("kill_engine", "host killed, engine killed mid-restart -> all Up"),
                            ("cut_link", "link cut -> (fencing enabled later) -> HA VMs Up")):
        value = median(scenario)
        if value is not None:
            print(f"  {label:52} {value:7.2f} s  ({value / NON_RESPONSIVE_AFTER_S:.1f}x the "
                  "detection timeout)")
    if "kill_agent" in by:
        print(f"  {'agent killed -> soft fence, VMs stay put':52} restarts: 0 (asserted)")
    print(f"duplicate running copies seen across all fault runs: {duplicates}")
    figures = {"duplicates": duplicates, "ha_restart_s": median("kill_host"),
               "fault_runs": len(runs), "failed_rounds": failed_rounds,
               "kill_engine_restart_s": median("kill_engine"),
               "cut_link_restart_s": median("cut_link"),
               "non_responsive_after_s": NON_RESPONSIVE_AFTER_S,
               "ratio_to_detection": (round(median("kill_host") / NON_RESPONSIVE_AFTER_S, 2)
                                      if median("kill_host") else None)}
    print(json.dumps(figures))
    return 0 if failed_rounds == 0 and duplicates == 0 and runs else 1


if __name__ == "__main__":
    sys.exit(main())
