"""The layout keeps the design's dependency rule, read from the code's own imports:

    cli ──> api ──> workers (names, config) ──> pool_manager
     │  └─> workers (any)                           ^
     └─> bench ─────────────────────────────────────┘
    images/  stands apart: the reference model server imports nothing of ours

pool_manager imports no web framework, no task queue and nothing of the packages above
it; no package imports one that stands above it; no modules import each other in a circle.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pool_manager", "workers", "api", "bench", "cli")
# package -> what of ours it may import (a package, or one module of it)
ALLOWED = {
    "pool_manager": {"pool_manager"},
    "workers": {"workers", "pool_manager"},
    "api": {"api", "pool_manager", "workers.names", "workers.config"},  # tasks by name, never worker code
    "bench": {"bench", "pool_manager", "workers.names", "workers.config"},
    "cli": {"cli", "api", "workers", "pool_manager", "bench"},
}
FRAMEWORKS = {"flask", "werkzeug", "gunicorn", "celery", "kombu", "flower"}


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of our packages and images/."""
    found = {}
    for path in sorted(REPO.glob("*/**/*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[0] in PACKAGES or parts[0] == "images":
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """Absolute names of every module `name` imports (relative imports resolved), at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from x import module`
    return found


def graph() -> dict[str, set[str]]:
    """Our modules -> the modules of ours they import."""
    ours = modules()
    return {name: {m for m in imports_of(name, path) if m in ours and m != name} for name, path in ours.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                on_stack.discard(member)
                component.append(member)
            on_stack.discard(node)
            if component:
                found.append(sorted([node, *component]))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def allowed(importer: str, imported: str) -> bool:
    rules = ALLOWED[importer.split(".")[0]]
    return any(imported == rule or imported.startswith(rule + ".") for rule in rules)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_stands_below_it(package):
    wrong = sorted(f"{importer} -> {imported}" for importer, targets in graph().items()
                   if importer.split(".")[0] == package for imported in targets if not allowed(importer, imported))
    assert not wrong, wrong


def test_the_domain_imports_no_web_framework_or_task_queue():
    ours = modules()
    wrong = sorted(f"{name} -> {m}" for name, path in ours.items() if name.startswith("pool_manager")
                   for m in imports_of(name, path) if m.split(".")[0] in FRAMEWORKS)
    assert not wrong, wrong


def test_the_reference_server_imports_nothing_of_ours():
    ours = modules()
    server = [name for name in ours if name.startswith("images")]
    assert server and not any(imports_of(name, ours[name]) & set(ours) for name in server)


def test_no_modules_import_each_other_in_a_circle():
    assert cycles(graph()) == []


def test_the_check_sees_a_cycle_and_a_wrong_import():
    """The checks above can fail: a circle and an upward import, as the code could have them."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert not allowed("pool_manager.relay", "bench.stack")
    assert not allowed("api.jobs", "workers.tasks")
    assert allowed("api.jobs", "workers.names")
    edges = graph()
    assert "pool_manager.keys" in edges["pool_manager.state"]  # imports are read at all
    assert "pool_manager.errors" in edges["pool_manager.specs"]  # relative ones included
