"""The Markdown report: the headline targets table, then a section per scenario with its
tables and plots (PNGs beside the report, linked by file name)."""

from . import scenarios
from .markdown import table

TITLES = {
    "overhead": "1. Overhead over a direct container call",
    "warm_vs_cold": "2. New session: warm pool vs cold start",
    "arrivals": "3. Poisson arrivals against the refill capacity",
    "burst": "4. Burst: 20 new sessions at once",
    "burst_engines": "4b. Burst: 20 new sessions at once, one pool on two engines",
    "refill": "5. Refill reaction",
    "scale": "6. Scale",
    "sizing": "Sizing: fixed targets vs auto, and a rollout under load",
}
MET = {True: "yes", False: "**no**", None: "n/a"}


def render(results: dict) -> str:
    parts = [f"# greenroom benchmark: {results['name']}", intro(results), "## Targets", targets_table(results)]
    for name, result in results["scenarios"].items():
        parts += [f"## {TITLES.get(name, name)}", section(name, result, results["machine"].get("cpus"))]
    return "\n\n".join(parts) + "\n"


def intro(results: dict) -> str:
    m, g = results["machine"], results["git"]
    mode = "quick (CI smoke: small samples, not for quoting)" if results["quick"] else "full"
    commit = (g.get("commit") or "unknown")[:12] + (" (uncommitted changes)" if g.get("dirty") else "")
    return (f"Mode: {mode}. Started {results['started_at']}, took {results['duration_s'] / 60:.1f} min. "
            f"Machine: {m.get('cpus')} CPUs, {m.get('memory_gib')} GiB, Python {m.get('python')}, "
            f"Docker {m.get('docker')}. Commit {commit}. Model: the reference image greenroom/chatbot:latest "
            f"({(m.get('image') or 'unknown').removeprefix('sha256:')[:12]}) on the docker runtime (host network). "
            "Targets are goals, not assertions.")


def targets_table(results: dict) -> str:
    rows = [[r["target"], r["measured"], MET[r["met"]]] for r in results["targets"]]
    return table(["target", "measured", "met"], rows)


def section(name: str, result: dict, cpus: int | None = None) -> str:
    if "error" in result:
        return f"Failed: `{result['error']}`"
    parts = [scenarios.load(name).markdown(result)]
    parts += [f"![{name}]({plot})" for plot in result.get("plots", [])]
    load = result.get("loadavg_1min") or {}
    parts.append(f"_Scenario time: {result['duration_s']:.0f} s; 1-minute load average before/after: "
                 f"{load.get('before', 0):.1f}/{load.get('after', 0):.1f} ({cpus} CPUs)._")
    return "\n\n".join(parts)
