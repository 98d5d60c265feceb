"""YAML loading that remembers the line of every key, for errors users can act on."""

from __future__ import annotations

import re
from typing import Any

import yaml

Path_ = tuple[Any, ...]


def load_yaml_with_lines(text: str, filename: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML; return the data and a map from key path to 1-based line."""
    from synthforge.errors import UserError

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if mark is not None and mark.line >= len(text.splitlines()):  # failed at end of file: point where it began
            mark = exc.context_mark or mark
        problem = exc.problem or exc.context or "invalid YAML"
        line = text.splitlines()[mark.line] if mark is not None and mark.line < len(text.splitlines()) else ""
        raise UserError(
            f"YAML syntax error: {problem}",
            file=filename,
            line=mark.line + 1 if mark else None,
            hint=_flow_placeholder_hint(line) or "check indentation, colons and quotes on this line or the one above",
        ) from None
    except yaml.YAMLError as exc:
        raise UserError(f"YAML error: {exc}", file=filename) from None
    finally:
        loader.dispose()
    lines: dict[Path_, int] = {}
    if node is not None:
        _record_lines(node, (), lines, filename)
    return data, lines


def _flow_placeholder_hint(line: str) -> str | None:
    """`{fraction: ${r}}`: inside [..] or {..} YAML reads `{` as a mapping; a quoted placeholder keeps its type."""
    if re.search(r"[\[{].*\$\{", line):
        return 'quote placeholders inside [..] or {..}, e.g. {fraction: "${r}"} (a quoted "${r}" keeps the value\'s type)'
    return None


def _record_lines(node: yaml.Node, path: Path_, lines: dict[Path_, int], filename: str) -> None:
    from synthforge.errors import UserError

    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            if key in seen:
                raise UserError(
                    f"duplicate key '{key}'",
                    file=filename,
                    line=key_node.start_mark.line + 1,
                    field=".".join(map(str, path + (key,))),
                    hint="each key may appear once in a mapping; remove or rename one",
                )
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _record_lines(value_node, path + (key,), lines, filename)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            _record_lines(item, path + (index,), lines, filename)


def line_for(lines: dict[Path_, int], path: Path_) -> int | None:
    """The line of the longest known prefix of `path`."""
    for end in range(len(path), -1, -1):
        line = lines.get(tuple(path[:end]))
        if line is not None:
            return line
    return None
