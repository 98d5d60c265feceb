"""Write the field and option reference tables of docs/ from the code, so they never drift from it.

A docs page holds a generated table between two markers:

    <!-- fields: generate -->            a step kind's Params (nested models as dotted rows)
    <!-- fields: backend openai -->      an LLM backend's config (the `backend:` block of generate)
    <!-- fields: recipe -->              the recipe's top-level fields
    <!-- fields: cli -->                 every command and option of the `synthforge` CLI
    ...generated...
    <!-- end fields -->

Each table row comes from a pydantic `Field(description=...)` or a click `help=`, with the code's default.
Everything outside the markers is written by hand.

    python scripts/gen_field_docs.py           rewrite the regions of every docs/**/*.md
    python scripts/gen_field_docs.py --check   exit 1 naming the pages whose regions are stale
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from synthforge.keys import model_types

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REGION = re.compile(r"(<!-- fields: (?P<name>[^>]+?) -->\n)(?P<body>.*?)(<!-- end fields -->)", re.S)
REQUIRED = "*required*"


@dataclass(frozen=True)
class FieldRow:
    """One documented field: its dotted path in the recipe, the model that declares it, and its info."""

    path: str
    owner: type[BaseModel]
    info: FieldInfo
    runtime_only: bool  # excluded from keys: declared `exclude=True`, or inside such a field


def backend_configs() -> dict[str, type[BaseModel]]:
    """Each registered LLM backend type (plugins included) -> its config model."""
    from synthforge.backends.llm import BACKEND_TYPES, backend_class

    return {name: backend_class(name).Config for name in BACKEND_TYPES.names()}


def _container_suffix(annotation: Any) -> str:
    """How a nested model sits in its field: `.<name>` for a mapping's values, `[]` for a list's items."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        return ".<name>"
    if origin is list:
        return "[]"
    return "".join(_container_suffix(arg) for arg in typing.get_args(annotation))


def field_rows(model: type[BaseModel], prefix: str = "", runtime_only: bool = False) -> Iterator[FieldRow]:
    """Every field of `model`, then the fields of the one model nested in it (a union of models is documented apart)."""
    for name, info in model.model_fields.items():
        path, excluded = prefix + name, runtime_only or bool(info.exclude)
        yield FieldRow(path, model, info, excluded)
        nested = model_types(info.annotation)
        if len(nested) == 1:
            yield from field_rows(nested[0], f"{path}{_container_suffix(info.annotation)}.", excluded)


def region_model(name: str) -> type[BaseModel]:
    """The model a `<!-- fields: NAME -->` region documents."""
    from synthforge.recipe.model import RecipeModel
    from synthforge.steps import STEP_KINDS, step_class

    words = name.split()
    if words == ["recipe"]:
        return RecipeModel
    if words[0] == "backend" and len(words) == 2 and words[1] in backend_configs():
        return backend_configs()[words[1]]
    if len(words) == 1 and words[0] in STEP_KINDS:
        return step_class(words[0]).Params
    raise SystemExit(f"unknown fields region '{name}': a step kind, 'backend TYPE', 'recipe' or 'cli'")


def default_of(info: FieldInfo) -> Any:
    """The code's default (a model default as its non-default fields), or PydanticUndefined when required."""
    if info.default_factory is not None:
        value = info.default_factory()
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    return value


def render_default(value: Any) -> str:
    """A table cell: plain text when JSON would not read it back as something else, JSON otherwise."""
    if value is PydanticUndefined:
        return REQUIRED
    if isinstance(value, tuple):
        value = list(value)
    text = value if isinstance(value, str) and _reads_as_plain(value) else json.dumps(value, ensure_ascii=False)
    return f"`{text}`"


def _reads_as_plain(text: str) -> bool:
    if not text or text != text.strip() or any(c in text for c in "\n`|"):
        return False
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def parse_default(cell: str) -> Any:
    """The value a documented default cell stands for (the inverse of render_default)."""
    cell = cell.strip().replace("\\|", "|")
    if cell == REQUIRED:
        return PydanticUndefined
    text = cell.removeprefix("`").removesuffix("`")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def fields_table(model: type[BaseModel], in_key: bool = True) -> str:
    """A markdown table of the model's fields; `in key` says whether a field enters step keys (runtime-only: no)."""
    lines = ["| field | default | in key | meaning |", "|---|---|---|---|"] if in_key else \
        ["| field | default | meaning |", "|---|---|---|"]
    for row in field_rows(model):
        cells = [f"`{row.path}`", _cell(render_default(default_of(row.info)))]
        cells += ["no" if row.runtime_only else "yes"] if in_key else []
        lines.append("| " + " | ".join(cells + [_cell(row.info.description or "")]) + " |")
    return "\n".join(lines) + "\n"


def cli_commands(command: click.Command, path: str = "synthforge",
                 parent: click.Context | None = None) -> Iterator[tuple[str, click.Command, click.Context]]:
    """Every command of the CLI, depth first, with its full name and a context to render its help."""
    context = command.make_context(path.split()[-1], [], parent=parent, resilient_parsing=True)
    yield path, command, context
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from cli_commands(sub, f"{path} {name}", context)


def documented_options(command: click.Command, context: click.Context) -> list[click.Option]:
    """Its options, without the --help every command has."""
    return [p for p in command.get_params(context) if isinstance(p, click.Option) and "--help" not in p.opts]


def cli_reference() -> str:
    from synthforge.cli import main

    parts = []
    for path, command, context in cli_commands(main):
        usage = " ".join([path, *command.collect_usage_pieces(context)])
        parts.append(f"### `{path}`\n\n```\n{usage}\n```\n\n{inspect.cleandoc(command.help or '')}\n")
        options = documented_options(command, context)
        if options:
            rows = [f"| `{_cell(record[0])}` | {_cell(record[1])} |"
                    for record in (option.get_help_record(context) for option in options) if record]
            parts.append("| option | meaning |\n|---|---|\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def render_region(name: str) -> str:
    if name == "cli":
        return cli_reference()
    return fields_table(region_model(name), in_key=name != "recipe")


def regenerated(text: str) -> str:
    """`text` with every fields region rewritten from the code."""
    return REGION.sub(lambda m: m.group(1) + render_region(m.group("name")) + m.group(4), text)


def region_bodies(text: str) -> dict[str, str]:
    return {m.group("name"): m.group("body") for m in REGION.finditer(text)}


def doc_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def write_docs(argv: list[str]) -> int:
    stale = []
    for page in doc_pages():
        text = page.read_text()
        new = regenerated(text)
        if new != text:
            stale.append(page.relative_to(ROOT))
            if "--check" not in argv:
                page.write_text(new)
    if "--check" in argv and stale:
        print(f"stale field docs in {', '.join(map(str, stale))}: run python scripts/gen_field_docs.py", file=sys.stderr)
        return 1
    for page in stale:
        print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(write_docs(sys.argv[1:]))
