"""Markdown tables and number formatting for the report."""


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float | None, digits: int = 1) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.{digits}f}"


def s(seconds: float | None, digits: int = 2) -> str:
    return "n/a" if seconds is None else f"{seconds:.{digits}f}"


def num(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction * 100:.1f}%"


def summary_row(label: str, summary: dict, fmt=ms) -> list:
    """label, n, p50, p95, p99, max."""
    return [label, summary["n"], *(fmt(summary.get(k)) for k in ("p50", "p95", "p99", "max"))]


SUMMARY_HEADERS = ["", "n", "p50", "p95", "p99", "max"]
