"""The layout is the architecture: no import cycle between `lib/` domain folders or between `defs/`
packages, test-only helpers stay out of the shipped package, and no private Dagster imports."""

import ast
from pathlib import Path

import sie_evals

PACKAGE = Path(sie_evals.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _group_graph(parent: str) -> dict[str, set[str]]:
    """Edges between the sub-packages of sie_evals.<parent> (an import of a.b from a.c is a -> a)."""
    root = PACKAGE / parent.replace(".", "/")
    groups = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    prefix = f"sie_evals.{parent}."
    graph: dict[str, set[str]] = {g: set() for g in groups}
    for group in groups:
        for file in (root / group).rglob("*.py"):
            for name in _imports(file):
                if name.startswith(prefix):
                    target = name[len(prefix) :].split(".")[0]
                    if target in graph and target != group:
                        graph[group].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_lib_folders_form_a_dag():
    graph = _group_graph("lib")
    assert {"core", "config", "engines", "gates", "quality", "perf", "servers", "tasks"} <= set(graph)
    assert _cycle(graph) is None, f"import cycle between lib/ folders: {' -> '.join(_cycle(graph) or [])}"
    assert graph["core"] == set(), f"core must depend on nothing else in lib/, imports {graph['core']}"


def test_defs_packages_form_a_dag():
    graph = _group_graph("defs")
    assert _cycle(graph) is None, f"import cycle between defs/ packages: {' -> '.join(_cycle(graph) or [])}"


def test_cycle_detector_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_private_dagster_imports_and_no_test_helpers_shipped():
    offenders = [
        f"{f.relative_to(PACKAGE)}: {name}"
        for f in PACKAGE.rglob("*.py")
        for name in _imports(f)
        if name.startswith("dagster._") or name.startswith("sie_evals_tests")
    ]
    assert offenders == []
    assert not (PACKAGE / "lib" / "loopback.py").exists()
