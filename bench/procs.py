"""Memory of a process tree, from /proc (Linux): RSS from status, PSS from smaps_rollup."""

import os
from pathlib import Path

PROC = Path("/proc")


def children_map() -> dict[int, list[int]]:
    """ppid -> child pids, for every process now."""
    tree: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree(pid: int, children: dict[int, list[int]]) -> list[int]:
    """pid and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _kib(path: Path, field: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_mib(pids: dict[str, int]) -> dict[str, dict]:
    """Per named process tree: rss_mib and pss_mib (summed over the tree), and processes."""
    children = children_map()
    out = {}
    for name, pid in pids.items():
        members = tree(pid, children)
        out[name] = {
            "processes": len(members),
            "rss_mib": sum(_kib(PROC / str(p) / "status", "VmRSS") for p in members) / 1024,
            "pss_mib": sum(_kib(PROC / str(p) / "smaps_rollup", "Pss") for p in members) / 1024,
        }
    return out


def cpu_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs, from /proc/stat)."""
    fields = [int(x) for x in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pids: dict[str, int]) -> float:
    """CPU seconds (user + system) used so far by the named process trees."""
    children, ticks = children_map(), 0
    for pid in pids.values():
        for member in tree(pid, children):
            try:
                fields = (PROC / str(member) / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")
