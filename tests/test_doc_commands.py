"""Every command of a ```bash block in README.md and docs/ (and every inline `synthforge ... recipes/...` span)
runs, so an example can never rot.

What "runs" means, per command (docs/cli.md, "Examples are tested"):
- cheap commands run for real, in a copy of recipes/ with a fresh cache, and must exit 0: `plan` of any recipe,
  `new`, `cache ls`, `cache verify`, `cache gc --dry-run` and everything on recipes/demo.yaml (built first);
- the rest (building a study, a remote, Ray) is checked without running: click parses the whole command line
  (group options, the subcommand, every option and argument), then every recipe it names loads with its `--set`
  values, and every step name (STEP, --only, --force, --step, --reference), --variant and --fail-on gate is
  checked against that real recipe;
- other programs are known by name (setup script, pytest, pip, git, export); a line with anything else fails.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from synthforge.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SYNTHFORGE = {"synthforge", ".venv/bin/synthforge"}
OTHER_PROGRAMS = {"bash", ".venv/bin/python", "pip", "git", "export", "eval", "ray"}
PLACEHOLDERS = {"$BASE": "HEAD", "URL": "s3://bucket/prefix"}


@dataclass
class Example:
    where: str  # file:line
    args: list[str]  # after the program name
    produced: set[str]  # files an earlier command of the same line writes (`git show ... > base.lock`)


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, command line) of every bash block line (continuations joined) and inline recipe span."""
    text = path.read_text()
    found = []
    for block in re.finditer(r"```bash\n(.*?)```", text, re.S):
        start = text.count("\n", 0, block.start(1)) + 1
        joined, first = "", None
        for offset, line in enumerate(block.group(1).splitlines()):
            first = start + offset if first is None else first
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            found.append((first, joined + line))
            joined, first = "", None
    for span in re.finditer(r"`((?:\.venv/bin/)?synthforge [^`]*recipes/[^`]*)`", text):
        found.append((text.count("\n", 0, span.start()) + 1, span.group(1)))
    return found


def doc_examples() -> list[Example]:
    examples = []
    for path in DOCS:
        for number, line in _lines(path):
            words = [PLACEHOLDERS.get(w, w) for w in shlex.split(line.replace("$BASE", "HEAD"), comments=True)]
            produced: set[str] = set()
            command: list[str] = []
            redirect = False
            for word in words + ["&&"]:
                if redirect:  # `git show X > base.lock`: base.lock is a file this line makes
                    produced.add(word)
                    redirect = False
                elif word in ("&&", ">"):
                    if command:
                        examples.append(Example(f"{path.relative_to(ROOT)}:{number}", command, set(produced)))
                    command, redirect = [], word == ">"
                elif command or not re.fullmatch(r"[A-Z_]+=\S*", word):  # `SYNTHFORGE_CACHE=... synthforge`
                    command.append(word)
    return examples


EXAMPLES = doc_examples()
COMMANDS = [e for e in EXAMPLES if e.args[0] in SYNTHFORGE]


def test_the_docs_have_examples_and_only_known_programs():
    assert len(COMMANDS) >= 30
    unknown = [f"{e.where}: {' '.join(e.args)}" for e in EXAMPLES if e.args[0] not in SYNTHFORGE | OTHER_PROGRAMS]
    assert unknown == []


def test_the_programs_the_docs_name_exist():
    for example in EXAMPLES:
        if example.args[0] == "bash":
            assert (ROOT / example.args[1]).is_file(), example.where
        if example.args[:2] == ["pip", "install"]:
            extra = re.fullmatch(r"synthforge\[(\w+)\]", example.args[2]).group(1)
            assert re.search(rf"^{extra} = \[", (ROOT / "pyproject.toml").read_text(), re.M), example.where


def _parse(args: list[str]) -> tuple[list[str], dict]:
    """The command path and its parsed parameters, as click reads the line (a usage error fails the test)."""
    ctx = main.make_context("synthforge", list(args), resilient_parsing=False)
    names, command, rest = [], main, ctx._protected_args + ctx.args  # noqa: SLF001  (click keeps the subcommand here)
    while isinstance(command, click.Group):
        name, command, rest = command.resolve_command(ctx, rest)
        names.append(name)
        ctx = command.make_context(name, rest, parent=ctx)
        rest = ctx._protected_args + ctx.args  # noqa: SLF001
    return names, ctx.params


def _recipes(params: dict, produced: set[str]) -> list[str]:
    paths = [params.get(name) for name in ("recipe", "a", "b")] + list(params.get("recipes", ()))
    found = []
    for path in filter(None, paths):
        path = path.split(":", 1)[-1].split("#", 1)[0]  # REV:path and path#step name the recipe at path
        assert path in produced or (ROOT / path).is_file(), f"{path} does not exist"
        if path.endswith((".yaml", ".yml")):
            found.append(path)
    return found


def _check_against_recipe(names: list[str], params: dict, produced: set[str]) -> None:
    from synthforge.diff import parse_gate
    from synthforge.recipe.resolve import load_recipe, parse_overrides

    for gate in params.get("fail_on", ()):
        parse_gate(gate)
    for path in _recipes(params, produced):
        recipe = load_recipe(ROOT / path, parse_overrides(params.get("sets", ())))
        steps = set(recipe.model.steps)
        named = [params.get("step"), *params.get("only", ()), *params.get("force", ()), *params.get("steps", ())]
        named.append((params.get("reference") or "").split(".")[0] or None)
        assert not set(filter(None, named)) - steps, f"no such step in {path}: {set(filter(None, named)) - steps}"
        if params.get("variant"):
            assert recipe.select_variants(params["variant"])


def _runs_cheaply(names: list[str], params: dict) -> bool:
    if params.get("remote_url") or params.get("push") or names[0] == "diff":
        return False
    recipe = params.get("recipe") or ""
    return (names[0] in ("plan", "new") or recipe == "recipes/demo.yaml"
            or names in (["cache", "ls"], ["cache", "verify"]) or (names == ["cache", "gc"] and params["dry_run"]))


@pytest.mark.parametrize("example", COMMANDS, ids=lambda e: f"{e.where} {' '.join(e.args[1:3])}")
def test_a_doc_command_parses_and_names_what_its_recipe_has(example, monkeypatch):
    monkeypatch.chdir(ROOT)  # paths in the docs are relative to the repository
    names, params = _parse(example.args[1:])
    _check_against_recipe(names, params, example.produced)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A copy of recipes/ with a fresh cache, demo.yaml built: where the cheap doc commands run."""
    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(ROOT / "recipes", root / "recipes")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("SYNTHFORGE_CACHE", str(root / "cache"))
        patch.delenv("SYNTHFORGE_REMOTE", raising=False)
        result = CliRunner().invoke(main, ["-q", "build", "recipes/demo.yaml"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return root


def _parses(example: Example) -> bool:
    """Whether a line parses (a line that does not fails its own parse test, not the collection)."""
    try:
        _parse(example.args[1:])
    except click.ClickException:
        return False
    return True


def _cheap_examples() -> list[Example]:
    import os

    here = os.getcwd()
    os.chdir(ROOT)
    try:
        return [e for e in COMMANDS if _parses(e) and _runs_cheaply(*_parse(e.args[1:]))]
    finally:
        os.chdir(here)


@pytest.mark.parametrize("example", _cheap_examples(), ids=lambda e: f"{e.where} {' '.join(e.args[1:3])}")
def test_a_cheap_doc_command_runs(example, sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("SYNTHFORGE_CACHE", str(sandbox / "cache"))
    monkeypatch.delenv("SYNTHFORGE_REMOTE", raising=False)
    result = CliRunner().invoke(main, ["-q", *example.args[1:]], catch_exceptions=False)
    assert result.exit_code == 0, f"{example.where}: {result.output}"
