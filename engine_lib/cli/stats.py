"""``kestrel stats HOST|VM``: current figures and a window of their history as a table,
as JSON, or drawn as a PNG chart (--plot)."""

from __future__ import annotations

from engine_lib.cli.common import open_engine, print_json

# (heading, figure, format) of the history table's columns after the time.
_COLUMNS = (("CPU%", "cpu_percent", "{:.1f}"), ("MAX%", "cpu_percent_max", "{:.1f}"),
            ("MEM USED", "memory_used_mib", "{:.0f}Mi"), ("MEM FREE", "memory_free_mib", "{:.0f}Mi"),
            ("LOAD", "load_1m", "{:.2f}"), ("NET RX", "net_rx_bps", "{}"),
            ("NET TX", "net_tx_bps", "{}"), ("DISK RD", "disk_read_bps", "{}"),
            ("DISK WR", "disk_write_bps", "{}"))
_WIDTH = 9


def _rate(value: float) -> str:
    for unit in ("B/s", "kB/s", "MB/s"):
        if abs(value) < 1000:
            return f"{value:.0f}{unit}" if unit == "B/s" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.1f}GB/s"


def _cell(figure: str, fmt: str, value) -> str:
    if value is None:
        return "-"
    return _rate(value) if figure.endswith("_bps") else fmt.format(value)


def _current_line(current: dict) -> str:
    if not current:
        return "current: no figures yet"
    shown = [f"{key}={_cell(key, '{}', value)}" for key, value in current.items()
             if key != "sampled_at"]
    return f"current ({current['sampled_at']}): {' '.join(shown)}"


def print_table(info: dict) -> None:
    print(f"{info['kind']} {info['name']}: {info['since']} to {info['until']}, "
          f"{info['resolution']} samples")
    print(_current_line(info["current"]))
    print(f"{'AT':25} {'N':>4} " + " ".join(f"{heading:>{_WIDTH}}" for heading, _, _ in _COLUMNS))
    for sample in info["samples"]:
        print(f"{sample['at']:25} {sample['samples']:>4} " + " ".join(
            f"{_cell(figure, fmt, sample.get(figure)):>{_WIDTH}}" for _, figure, fmt in _COLUMNS))


def stats(args) -> int:
    with open_engine(args) as engine:
        read = engine.stats.vm if args.vm else engine.stats.host
        info = read(args.name, period=args.period, since=args.since, until=args.until,
                    resolution=args.resolution)
    if args.plot:
        from engine_lib.cli.stats_plot import plot  # matplotlib only when asked for

        plot(info, args.plot)
        print(f"{info['kind']} {info['name']}: {len(info['samples'])} samples drawn in "
              f"{args.plot}")
    elif args.json:
        print_json(info)
    else:
        print_table(info)
    return 0
