"""Print synthforge's internal import graph as floors, with arrows running back up and circles.

    python scripts/import_graph.py [PACKAGE_DIR]     (default: the synthforge/ beside this script)

Only the standard library (ast): nothing is imported. Three kinds of import are told apart:
  - module-level: runs when the module is imported (inside `try`/`if` at the top too);
  - type-only: under `if TYPE_CHECKING:` (never runs);
  - deferred: inside a function (runs when the function is called).
Floors come from module-level imports alone: a module sits one floor above the highest module it
imports (floor 0 imports nothing of ours). An arrow "back up" is a type-only or deferred import of a
module on the same or a higher floor that closes a circle (its target already depends on its source).
Circles are listed for all imports, for module-level imports alone (these fail or half-initialise at
import time) and for all imports between packages (`steps`, `backends`,
... and top-level modules), which shows layers that lean on each other. Importing `a.b.c` also runs
`a/__init__.py` and `a/b/__init__.py`; those implicit parent imports are not counted as arrows.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT_PACKAGE = "synthforge"


@dataclass(frozen=True)
class Arrow:
    source: str
    target: str
    how: str  # "module" | "type" | "deferred"


def module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement with how it runs: walks statements, noting function and TYPE_CHECKING scopes."""
    found: list[tuple[ast.Import | ast.ImportFrom, str]] = []

    def walk(node: ast.AST, how: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, how))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(child, "deferred" if how == "module" else how)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.body:
                    walk(ast.Module(body=[statement], type_ignores=[]), "type" if how == "module" else how)
                for statement in child.orelse:
                    walk(ast.Module(body=[statement], type_ignores=[]), how)
            else:
                walk(child, how)

    walk(tree, "module")
    return found


def _targets(statement: ast.Import | ast.ImportFrom, source: str, is_package: bool, modules: set[str]) -> list[str]:
    """Our modules one import statement names (`from pkg import mod` names pkg.mod when it is a module)."""
    if isinstance(statement, ast.Import):
        names = [alias.name for alias in statement.names]
    else:
        base = statement.module or ""
        if statement.level:  # relative: against the importing module's package, one level up per extra dot
            package = source.split(".") if is_package else source.split(".")[:-1]
            package = package[: len(package) - statement.level + 1]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in statement.names]
    return sorted({_nearest_module(name, modules) for name in names if name.split(".")[0] == ROOT_PACKAGE} - {None})


def _nearest_module(name: str, modules: set[str]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def read_arrows(package_dir: Path) -> tuple[set[str], list[Arrow]]:
    paths = sorted(package_dir.rglob("*.py"))
    modules = {module_name(path, package_dir) for path in paths}
    arrows: set[Arrow] = set()
    for path in paths:
        source = module_name(path, package_dir)
        is_package = path.name == "__init__.py"
        for statement, how in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = _targets(statement, source, is_package, modules)
            arrows.update(Arrow(source, target, how) for target in targets if target != source)
    return modules, sorted(arrows, key=lambda a: (a.source, a.target, a.how))


def strongly_connected(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one member (the circles), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(nodes) + 100))
    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return sorted(found)


RUNTIME = ("module", "deferred")  # the imports that run; a type-only one never does


def circles(nodes: set[str], arrows: list[Arrow], kinds: tuple[str, ...] = ("module",)) -> list[list[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for arrow in arrows:
        if arrow.how in kinds:
            edges[arrow.source].add(arrow.target)
    return strongly_connected(nodes, edges)


def package_of(module: str) -> str:
    """`synthforge.steps.load` -> `steps`; top-level modules are their own package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_circles(modules: set[str], arrows: list[Arrow]) -> list[list[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for arrow in arrows:
        if package_of(arrow.source) != package_of(arrow.target):
            edges[package_of(arrow.source)].add(package_of(arrow.target))
    return strongly_connected({package_of(m) for m in modules}, edges)


def floors(modules: set[str], arrows: list[Arrow]) -> dict[str, int]:
    """Longest path down module-level imports; members of a circle share the circle's floor."""
    circle_of = {member: tuple(circle) for circle in circles(modules, arrows) for member in circle}
    below: dict[str, set[str]] = defaultdict(set)
    for arrow in arrows:
        if arrow.how == "module" and circle_of.get(arrow.source, arrow.source) != circle_of.get(arrow.target, arrow.target):
            below[arrow.source].add(arrow.target)
    floor: dict[str, int] = {}

    def height(module: str) -> int:
        if module not in floor:
            floor[module] = 0  # placeholder while visiting (circles are collapsed below)
            members = circle_of.get(module, (module,))
            floor[module] = max((height(t) + 1 for m in members for t in below[m]), default=0)
            for member in members:
                floor[member] = floor[module]
        return floor[module]

    for module in sorted(modules):
        height(module)
    return floor


def arrows_back_up(modules: set[str], arrows: list[Arrow], floor: dict[str, int]) -> list[Arrow]:
    """Arrows inside a circle of all imports that point to the same or a higher floor: what keeps the circle."""
    circle_of = {member: tuple(c) for c in circles(modules, arrows, ("module", "type", "deferred")) for member in c}
    return [a for a in arrows if a.source in circle_of and circle_of[a.source] == circle_of.get(a.target)
            and floor[a.target] >= floor[a.source]]


def short(module: str) -> str:
    return module.removeprefix(f"{ROOT_PACKAGE}.")


def report(package_dir: Path) -> str:
    modules, arrows = read_arrows(package_dir)
    floor = floors(modules, arrows)
    lines = [f"{len(modules)} modules, {len(arrows)} arrows "
             f"({sum(a.how == 'module' for a in arrows)} module-level, {sum(a.how == 'type' for a in arrows)} type-only, "
             f"{sum(a.how == 'deferred' for a in arrows)} deferred in functions)", "",
             "floors (module-level imports; each module sits above everything it imports):"]
    for level in range(max(floor.values(), default=-1), -1, -1):
        lines.append(f"  {level:2d}: {', '.join(short(m) for m in sorted(m for m in modules if floor[m] == level))}")
    upward = arrows_back_up(modules, arrows, floor)
    lines += ["", f"arrows back up (to the same or a higher floor, closing a circle through deferred imports): {len(upward)}"]
    lines += [f"  {short(a.source)} ({floor[a.source]}) -> {short(a.target)} ({floor[a.target]}) [{a.how}]" for a in upward]
    lines += ["", "circles among all imports (deferred and type-only included):"]
    lines += [f"  {' <-> '.join(short(m) for m in circle)}"
              for circle in circles(modules, arrows, ("module", "type", "deferred"))] or ["  none"]
    lines += ["", "circles among imports that run (module-level and deferred; tests/test_layers.py forbids them):"]
    lines += [f"  {' <-> '.join(short(m) for m in circle)}" for circle in circles(modules, arrows, RUNTIME)] or ["  none"]
    lines += ["", "circles among module-level imports:"]
    lines += [f"  {' <-> '.join(short(m) for m in circle)}" for circle in circles(modules, arrows)] or ["  none"]
    lines += ["", "circles between packages (all imports, deferred included):"]
    lines += [f"  {' <-> '.join(circle)}" for circle in package_circles(modules, arrows)] or ["  none"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    package_dir = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / ROOT_PACKAGE
    print(report(package_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
