"""matplotlib on the Agg backend (no display), one figure per PNG."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def figure(rows: int = 1, cols: int = 1, width: float = 9, height: float = 3.2):
    """A figure with rows x cols axes (always a flat list)."""
    fig, axes = plt.subplots(rows, cols, figsize=(width, height * rows), squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_ms_axis(ax) -> None:
    """A log x axis labelled in plain numbers at 1-2-5 steps."""
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator([m * 10**e for e in range(-1, 5) for m in (1, 2, 5)]))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def integer_y(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def cdf(ax, values: list[float], label: str, scale: float = 1000.0) -> None:
    """An empirical CDF of values (in seconds, drawn times scale)."""
    ordered = sorted(v * scale for v in values)
    if ordered:
        ax.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post", label=label)
