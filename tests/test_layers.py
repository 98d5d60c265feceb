"""The import layers stay true: step kinds are independent, lower layers never reach up into the steps,
no circle among the imports that run (module-level or deferred inside a function), and docs/architecture.md
names every module."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "synthforge"


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


graph = _import_graph()
MODULES, ARROWS = graph.read_arrows(PACKAGE)


def step_kind_modules() -> set[str]:
    from synthforge.steps import STEP_KINDS

    return {target.partition(":")[0] for target in STEP_KINDS.values() if target.startswith("synthforge.steps.")}


def test_the_graph_sees_every_module_and_import_kind():
    assert {"synthforge.stepapi", "synthforge.steps.generate", "synthforge.backends.llm"} <= MODULES
    kinds = {(a.source, a.target): a.how for a in ARROWS}
    assert kinds[("synthforge.steps.generate", "synthforge.backends.llm")] == "module"
    assert kinds[("synthforge.steps.generate", "synthforge.generation.responses")] == "deferred"
    assert kinds[("synthforge.sharding", "synthforge.cache")] == "type"


def test_no_step_kind_imports_another():
    kinds = step_kind_modules()
    assert len(kinds) >= 7
    crossing = sorted(f"{a.source} -> {a.target} [{a.how}]" for a in ARROWS
                      if a.source in kinds and a.target in kinds and a.source != a.target)
    assert not crossing, f"step kinds share code through synthforge.steps.rows or a library module, not each other: {crossing}"


def test_only_the_registry_reaches_step_kind_modules():
    kinds = step_kind_modules()
    outside = sorted(f"{a.source} -> {a.target}" for a in ARROWS if a.target in kinds and a.source not in kinds)
    assert not outside, f"step kinds are found through synthforge.steps.step_class, not imported: {outside}"


def below_the_steps() -> set[str]:
    """Every module the steps package reaches (any import), outside the package: the layers under it."""
    edges: dict[str, set[str]] = {}
    for arrow in ARROWS:
        edges.setdefault(arrow.source, set()).add(arrow.target)
    in_steps = {m for m in MODULES if m == "synthforge.steps" or m.startswith("synthforge.steps.")}
    reached, todo = set(), list(in_steps)
    while todo:
        for target in edges.get(todo.pop(), ()):
            if target not in reached and target not in in_steps:
                reached.add(target)
                todo.append(target)
    return reached


def test_layers_below_the_steps_never_import_the_steps():
    below = below_the_steps()
    assert {"synthforge.stepapi", "synthforge.backends.llm", "synthforge.selection", "synthforge.cache"} <= below
    builder = {"synthforge.building", "synthforge.running", "synthforge.planning", "synthforge.graph", "synthforge.executors"}
    assert builder <= MODULES  # the names below are today's modules
    assert not below & (builder | {"synthforge.recipe.resolve", "synthforge.app", "synthforge.api"})
    upward = sorted(f"{a.source} -> {a.target} [{a.how}]" for a in ARROWS
                    if a.source in below and (a.target == "synthforge.steps" or a.target.startswith("synthforge.steps.")))
    assert not upward, f"move what these need below the steps (e.g. synthforge.stepapi): {upward}"


def test_no_circles_among_the_imports_that_run_deferred_ones_included():
    circles = graph.circles(MODULES, ARROWS, graph.RUNTIME)
    assert not circles, f"import circles (module-level or inside functions): {circles}"
    arrows = sorted(f"{a.source} -> {a.target}" for a in graph.arrows_back_up(MODULES, ARROWS, graph.floors(MODULES, ARROWS))
                    if a.how != "type")
    assert not arrows, f"imports running back up the floors: {arrows}"


def test_the_graph_finds_a_circle_and_an_arrow_back_up(tmp_path):
    package = tmp_path / "synthforge"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("from synthforge.high import b\n")
    (package / "high.py").write_text("from synthforge.low.a import x\n")
    (package / "b.py").write_text("def f():\n    from synthforge import high\n")
    (package / "c.py").write_text("def f():\n    from synthforge import d\n")
    (package / "d.py").write_text("from synthforge import c\n")
    modules, arrows = graph.read_arrows(package)
    assert graph.circles(modules, arrows) == [["synthforge.high", "synthforge.low.a"]]
    assert graph.circles(modules, arrows, graph.RUNTIME) == [["synthforge.c", "synthforge.d"], ["synthforge.high", "synthforge.low.a"]]
    text = graph.report(package)
    assert "high <-> low.a" in text


def architecture_map() -> tuple[set[str], set[str]]:
    """(modules, folders) the doc's map names: entries sit 2 (top level) or 4 (in a folder) spaces in;
    deeper lines continue a description."""
    tree = (REPO / "docs" / "architecture.md").read_text().split("```")[1]
    modules, folders, folder = set(), set(), ""
    for line in tree.splitlines():
        match = re.match(r"^( {2}| {4})(?! )([\w./]+)", line)
        if not match:
            continue
        entry = match.group(2)
        if len(match.group(1)) == 2:
            folder = entry if entry.endswith("/") else ""
        else:
            entry = folder + entry
        (folders if entry.endswith("/") else modules).add(entry.removesuffix("/").removesuffix(".py"))
    return modules, folders


def test_architecture_names_every_module():
    modules, folders = architecture_map()
    paths = {m.removeprefix("synthforge.").replace(".", "/") for m in MODULES if m != "synthforge"}
    assert not sorted(paths - modules - folders), f"docs/architecture.md's map lacks {sorted(paths - modules - folders)}"
    assert not sorted(modules - paths - {"__init__"}), f"docs/architecture.md names missing modules {sorted(modules - paths)}"
    assert all((PACKAGE / folder).is_dir() for folder in folders), folders


def documented_layers() -> list[set[str]]:
    """The "Layers" paragraph of docs/architecture.md, top first: the backticked names between the `>`s."""
    text = (REPO / "docs" / "architecture.md").read_text()
    paragraph = text[text.index("From the top:"):text.index("An import points down")]
    return [set(re.findall(r"`([a-z_]+)`", segment)) for segment in paragraph.split(" > ")]


def test_imports_point_down_the_documented_layers():
    layers = documented_layers()
    level = {name: index for index, names in enumerate(layers) for name in names}
    top_names = {m.split(".")[1] for m in MODULES if m.count(".") >= 1} - {"__main__"}
    assert not sorted(top_names - set(level)), f"place these in docs/architecture.md's Layers: {sorted(top_names - set(level))}"
    upward = sorted(f"{a.source} -> {a.target} [{a.how}]" for a in ARROWS if a.source.count(".") and a.target.count(".")
                    and a.source.split(".")[1] in level and level[a.target.split(".")[1]] < level[a.source.split(".")[1]])
    assert not upward, f"imports running up the documented layers: {upward}"


def test_the_api_build_takes_every_option_of_the_build_command():
    """The CLI is a client of the API: each `synthforge build` option is an argument of `OpenRecipe.build`
    (those that pick the recipe, print or only plan are the CLI's own)."""
    import inspect

    from synthforge.api import OpenRecipe
    from synthforge.cli import main

    # open(), plan(), the terminal; --recheck: the command line's remembered builds (synthforge.remembered)
    cli_only = {"recipe", "sets", "cache_dir", "dry_run", "quiet", "verbose", "recheck"}
    renamed = {"use_remote": "pull", "remote_url": "remote"}
    options = {renamed.get(p.name, p.name) for p in main.commands["build"].params if p.name not in cli_only}
    arguments = set(inspect.signature(OpenRecipe.build).parameters)
    assert len(options) > 15 and not options - arguments, f"OpenRecipe.build lacks {sorted(options - arguments)}"
