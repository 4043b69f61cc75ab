"""``kestrel stats``: a host's figures as a table, as JSON and as a PNG chart drawn from
real history rows; nonsense windows and unknown objects refused with the option named."""

import json
import struct
from datetime import UTC, datetime, timedelta

import pytest
from conftest import FakeAgent

from engine_lib import cli
from engine_lib.cli import stats_plot
from engine_lib.engine import Engine
from engine_lib.model import Host, HostStatistics
from engine_lib.services import stats_history
from engine_lib.services.common import find


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    """An engine whose host h1 has two hours of history, its CPU climbing each minute
    (one for the module: the commands only read)."""
    tmp_path = tmp_path_factory.mktemp("engine")
    agents = {}
    with Engine.open(engine_dir=str(tmp_path),
                     agent_factory=lambda a, p: agents.setdefault(a, FakeAgent(a))) as engine:
        engine.clusters.ensure("c1", virt_type="qemu")
        engine.hosts.ensure("h1", address="10.0.0.1", cluster="c1")
        now = datetime.now(UTC)
        with engine.store.transaction() as session:
            host_id = find(session, Host, "h1").id
            for minute in range(120, 0, -1):
                stats_history.record_minute(session, "host", [{
                    "object_id": host_id, "cpu_percent": 120.0 - minute,
                    "memory_used_mib": 2000 + minute, "memory_free_mib": 2000 - minute,
                    "load_1m": 0.5, "net_rx_bps": 1500.0}], now - timedelta(minutes=minute))
            session.add(HostStatistics(host_id=host_id, sampled_at=now, cpu_percent=119.5,
                                       memory_used_mib=2001, memory_free_mib=1999))
    return ["--engine-dir", str(tmp_path)]


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_a_table_json_and_a_png_chart(engine_dir, tmp_path, capsys):
    assert cli.main(["stats", "h1", "--period", "1h", *engine_dir]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("host h1: ") and lines[0].endswith("raw samples")
    assert "cpu_percent=119.5" in lines[1]
    assert lines[2].split()[:4] == ["AT", "N", "CPU%", "MAX%"]
    assert len(lines) == 3 + 60
    assert lines[-1].split()[2] == "119.0" and "1.5kB/s" in lines[-1]

    assert cli.main(["stats", "h1", "--period", "2h", "--json", *engine_dir]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["kind"], info["resolution"], len(info["samples"])) == ("host", "raw", 120)

    chart = tmp_path / "h1.png"
    assert cli.main(["stats", "h1", "--period", "2h", "--plot", str(chart), *engine_dir]) == 0
    assert "120 samples drawn" in capsys.readouterr().out
    assert _png_size(chart) == (stats_plot.WIDTH_PX, stats_plot.HEIGHT_PX)
    # A chart is drawn, not a blank canvas: many colours.
    assert len(chart.read_bytes()) > 20_000


@pytest.mark.parametrize("argv, code, message", [
    (["h1", "--period", "fortnight"], 2, "kestrel: invalid input: period: must be a number"),
    (["h1", "--since", "2026-12-06T10:00:00Z", "--until", "2026-12-06T09:00:00Z"], 2,
     "kestrel: invalid input: since: must be before until"),
    (["h1", "--resolution", "second"], 2, "kestrel: invalid input: resolution: must be one of"),
    (["h9"], 1, "kestrel: HostNotFound: host 'h9' does not exist"),
    (["h1", "--vm"], 1, "kestrel: VmNotFound: VM 'h1' does not exist"),
])
def test_nonsense_is_refused_naming_it(engine_dir, capsys, argv, code, message):
    assert cli.main(["stats", *argv, *engine_dir]) == code
    assert capsys.readouterr().err.startswith(message)


def test_a_window_without_samples_draws_nothing(engine_dir, tmp_path, capsys):
    chart = tmp_path / "old.png"
    assert cli.main(["stats", "h1", "--since", "2026-01-01T00:00:00Z", "--period", "1d",
                     "--plot", str(chart), *engine_dir]) == 1
    assert "has no samples from 2026-01-01T00:00:00+00:00" in capsys.readouterr().err
    assert not chart.exists()
