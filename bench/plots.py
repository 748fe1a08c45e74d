"""Line charts of the benchmarks' curves (matplotlib, written as PNG under bench/results/)."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

Series = dict[str, list[tuple[float, float]]]  # label -> (x, y) points


def curves(
    name: str, title: str, xlabel: str, ylabel: str, series: Series, logx: bool = False
) -> Path:
    """Plot each series as a line with its points marked; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, points in series.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=label)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(
                f"{y:,.3g}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
            )
    if logx:
        ax.set_xscale("symlog" if min(x for p in series.values() for x, _ in p) <= 0 else "log")
    ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.15)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


Panel = tuple[str, str, Series]  # title, y label, series


def panels(name: str, title: str, xlabel: str, charts: list[Panel]) -> Path:
    """Several small line charts sharing the x axis, two per row; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(charts) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(11, 2.6 * rows), sharex=True, squeeze=False)
    for ax, (panel_title, ylabel, series) in zip(axes.flat, charts, strict=False):
        for label, points in series.items():
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=label, linewidth=1)
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.1)
        ax.set(title=panel_title, ylabel=ylabel)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    for ax in axes.flat[len(charts) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
