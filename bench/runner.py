"""Run scenarios, then write bench/results/<name>.json and bench/report/<name>.md (and
latest.md) with the headline targets table and the plots."""

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from . import report, scenarios, targets
from .context import Context, clean
from .stack import IMAGE

BENCH_DIR = Path(__file__).resolve().parent


def run(names: list[str], quick: bool, name: str | None = None, output_dir: Path | None = None) -> dict:
    """Run the named scenarios in order; return the results (also written to disk)."""
    name = name or datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(output_dir) if output_dir else BENCH_DIR
    results_dir, report_dir = root / "results", root / "report"
    for folder in (results_dir, report_dir):
        folder.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"greenroom-bench-{name}-"))
    ctx = Context(workdir, report_dir, name, quick)
    results = header(name, quick, names)
    began = time.monotonic()
    try:
        for scenario in names:
            results["scenarios"][scenario] = run_one(ctx, scenario)
    except KeyboardInterrupt:
        log(f"interrupted; nothing written; the stacks' logs are in {workdir}")
        raise
    results["duration_s"] = time.monotonic() - began
    results["finished_at"] = now()
    results["targets"] = targets.evaluate(results)
    results = clean(results)
    write(results, results_dir, report_dir)
    results["report_path"] = str(report_dir / f"{name}.md")
    failed = [s for s, r in results["scenarios"].items() if "error" in r]
    if failed:
        log(f"scenarios failed: {', '.join(failed)}; stack logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def run_one(ctx: Context, scenario: str) -> dict:
    log(f"{scenario} ...")
    began, load_before = time.monotonic(), os.getloadavg()
    try:
        result = scenarios.load(scenario).run(ctx)
    except Exception as exc:  # one failed scenario is reported; the others still run
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["duration_s"] = time.monotonic() - began
    result["loadavg_1min"] = {"before": load_before[0], "after": os.getloadavg()[0]}  # others' load is noise
    log(f"{scenario} ... {'failed' if 'error' in result else 'done'} in {result['duration_s']:.0f}s")
    return result


def header(name: str, quick: bool, names: list[str]) -> dict:
    return {"name": name, "quick": quick, "started_at": now(), "scenario_names": list(names),
            "machine": machine(), "git": git(), "scenarios": {}}


def write(results: dict, results_dir: Path, report_dir: Path) -> None:
    name = results["name"]
    (results_dir / f"{name}.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    text = report.render(results)
    (report_dir / f"{name}.md").write_text(text)
    (report_dir / "latest.md").write_text(text)
    log(f"wrote {results_dir / f'{name}.json'} and {report_dir / f'{name}.md'}")


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    info["docker"] = _output(["docker", "version", "--format", "{{.Server.Version}}"])
    info["image"] = _output(["docker", "image", "inspect", "-f", "{{.Id}}", IMAGE])
    return info


def git() -> dict:
    commit = _output(["git", "-C", str(BENCH_DIR), "rev-parse", "HEAD"])
    dirty = _output(["git", "-C", str(BENCH_DIR), "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit, "dirty": bool(dirty)}


def _output(argv: list[str]) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
