"""`greenroom bench`: the benchmark harness (bench/); its runner is imported only when it runs."""

import signal
import sys
from pathlib import Path

import click

from bench.scenarios import NAMES as SCENARIOS


@click.command()
@click.option("--quick", is_flag=True,
              help="Every scenario briefly (CI): small samples, short boots (about 7 min here).")
@click.option("--scenario", "names", multiple=True, type=click.Choice(SCENARIOS),
              help="Run only this scenario (repeatable). Default: all, in order.")
@click.option("--name", help="Results name: bench/results/<name>.json, bench/report/<name>.md. Default: a timestamp.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write results/ and report/ under this folder instead of bench/.")
def bench(quick: bool, names: tuple[str, ...], name: str | None, output_dir: Path | None) -> None:
    """Measure greenroom against a private stack of its own (Redis, API, workers, beat and
    Docker containers of greenroom/chatbot:latest), then write the JSON results, a
    Markdown report with the targets table, and PNG plots."""
    try:
        from bench import runner
    except ImportError as exc:
        raise click.ClickException(f"the benchmark needs its extra: pip install -e '.[bench]' ({exc})") from exc
    signal.signal(signal.SIGTERM, _interrupt)  # stop the stack and its containers, as on Ctrl-C
    ordered = [s for s in SCENARIOS if s in names] if names else list(SCENARIOS)
    results = runner.run(ordered, quick, name, output_dir)
    click.echo(f"report: {results['report_path']}")
    failed = [s for s, r in results["scenarios"].items() if "error" in r]
    sys.exit(1 if failed else 0)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
