"""`greenroom bench --quick` runs every scenario against its own stack and writes a
well-formed report. Only the shape is checked: speed targets are reported by the
benchmark, never asserted here (the machines are shared and noisy)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scenarios import NAMES
from bench.targets import TARGETS

pytestmark = pytest.mark.timeout(1200)  # the quick run takes about 7 min; far more on a loaded machine
GREENROOM = str(Path(sys.executable).parent / "greenroom")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(docker_engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    bench = subprocess.Popen([GREENROOM, "bench", "--quick", "--name", "ci-quick", "--output-dir", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = bench.communicate(timeout=1100)
    except subprocess.TimeoutExpired:
        bench.terminate()  # SIGTERM: the bench removes its stacks' containers (a SIGKILL would leave them)
        _, stderr = bench.communicate(timeout=60)
        pytest.fail(f"the quick bench took over 1100 s:\n{stderr[-4000:]}")
    assert bench.returncode == 0, stderr[-4000:]
    return out, json.loads((out / "results" / "ci-quick.json").read_text())


def numbers(value, path="results"):
    """Every number in the results, with where it is."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from numbers(item, f"{path}[{index}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def test_every_scenario_ran_and_reports_finite_numbers(quick_run):
    _, results = quick_run
    assert results["quick"] is True
    assert list(results["scenarios"]) == list(NAMES)
    for name, scenario in results["scenarios"].items():
        assert "error" not in scenario, f"{name}: {scenario.get('error')}"
        assert isinstance(scenario["params"], dict) and scenario["duration_s"] > 0
    found = list(numbers(results))
    assert len(found) > 100
    assert all(math.isfinite(value) for _, value in found)


def test_headline_figures_are_numbers(quick_run):
    _, results = quick_run
    s = results["scenarios"]
    for kind in ("jobs", "chat"):
        assert isinstance(s["overhead"]["sequential"]["overhead"][kind]["p50"], float)
    assert s["overhead"]["sequential"]["latency"]["ping"]["p99"] > 0
    assert all(data["ratio_p50"] > 0 for data in s["warm_vs_cold"]["by_boot"].values())
    assert [round(phase["load"], 2) for phase in s["arrivals"]["phases"]] == [0.4, 0.8, 1.2, 0.8]
    assert [phase["sized"] for phase in s["arrivals"]["phases"]] == [False, False, False, True]
    assert all(0 <= phase["warm_fraction"] <= 1 for phase in s["arrivals"]["phases"])
    assert s["burst"]["sessions"] == 20 and s["burst"]["slowest_wait"]["max"] > 0
    assert s["refill"]["claim_to_create"]["n"] == s["refill"]["params"]["samples"]
    assert s["scale"]["memory_full"]["greenroom"]["rss_mib"] > 0


def test_targets_have_a_row_each_with_a_verdict(quick_run):
    out, results = quick_run
    assert [row["id"] for row in results["targets"]] == [id for _, id, _, _ in TARGETS]
    for row in results["targets"]:
        assert isinstance(row["value"], (int, float)) and isinstance(row["limit"], (int, float)), row
        assert row["met"] in (True, False), row
    report = (out / "report" / "ci-quick.md").read_text()
    table = report.split("## Targets", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| target")]
    assert len(rows) == len(TARGETS)
    assert all(line.rstrip().endswith(("| yes |", "| **no** |")) for line in rows)


def test_report_has_a_section_per_scenario_and_its_plots_are_pngs(quick_run):
    out, results = quick_run
    report = (out / "report" / "ci-quick.md").read_text()
    assert report == (out / "report" / "latest.md").read_text()
    assert report.count("\n## ") == 1 + len(NAMES)  # the targets, then one per scenario
    plots = [plot for scenario in results["scenarios"].values() for plot in scenario["plots"]]
    assert len(plots) == len(NAMES)
    for plot in plots:
        assert f"]({plot})" in report
        assert (out / "report" / plot).read_bytes()[:8] == PNG_SIGNATURE
