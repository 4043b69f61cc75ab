"""``kestrel stats --plot``: a host's or VM's CPU and memory over a window, as a PNG.

matplotlib (the ``plot`` extra) is imported here only, and drawn with its Agg canvas
(no display, no pyplot state shared between calls)."""

from __future__ import annotations

from datetime import datetime

from engine_lib.protocol.errors import KestrelError

WIDTH_PX, HEIGHT_PX, DPI = 1200, 700, 100


def plot(info: dict, path: str) -> None:
    """Draw ``info`` (engine.stats' answer) into the PNG file ``path``."""
    try:
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
        from matplotlib.figure import Figure
    except ImportError:
        raise KestrelError("--plot needs matplotlib: pip install 'kestrel-engine[plot]'",
                           field="plot") from None
    samples = info["samples"]
    if not samples:
        raise KestrelError(f"{info['kind']} {info['name']} has no samples from {info['since']} "
                           f"to {info['until']}: nothing to plot", field="plot")
    at = [datetime.fromisoformat(sample["at"]) for sample in samples]

    def series(figure: str) -> list[float]:
        # matplotlib leaves a gap where a figure is missing (NaN), rather than a false zero.
        return [float("nan") if s.get(figure) is None else s[figure] for s in samples]

    figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, layout="constrained")
    cpu, memory = figure.subplots(2, 1, sharex=True)
    since, until = (datetime.fromisoformat(info[end]) for end in ("since", "until"))
    figure.suptitle(f"{info['kind']} {info['name']}: {since:%Y-%m-%d %H:%M} to "
                    f"{until:%Y-%m-%d %H:%M} UTC ({info['resolution']} samples)")
    cpu.plot(at, series("cpu_percent"), label="average", color="tab:red")
    if info["resolution"] != "raw":
        cpu.plot(at, series("cpu_percent_max"), label="highest", color="tab:red",
                 linestyle="dotted")
    cpu.set_ylabel("CPU %")
    cpu.set_ylim(bottom=0)
    cpu.legend(loc="upper left")
    memory.plot(at, series("memory_used_mib"), label="used", color="tab:blue")
    if info["kind"] == "host":
        memory.plot(at, series("memory_free_mib"), label="free", color="tab:green")
    memory.set_ylabel("memory MiB")
    memory.set_ylim(bottom=0)
    memory.legend(loc="upper left")
    # The whole window, so a stretch without samples shows as one.
    memory.set_xlim(since, until)
    locator = AutoDateLocator()
    memory.xaxis.set_major_locator(locator)
    memory.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=since.tzinfo))
    for axes in (cpu, memory):
        axes.grid(alpha=0.3)
    try:
        figure.savefig(path, format="png")
    except OSError as err:
        raise KestrelError(f"--plot: cannot write {path}: {err.strerror or err}",
                           field="plot") from None
