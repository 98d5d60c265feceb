"""YAML loading that remembers the line of every key, for errors users can act on."""

from __future__ import annotations

from typing import Any

import yaml

Path_ = tuple[Any, ...]

# Bounds that answer in milliseconds instead of minutes: a recipe is a page of YAML, and
# aliases (&a / *a) may repeat a block, not expand into a billion values ("billion laughs").
MAX_RECIPE_CHARS = 1_000_000
MAX_VALUES = 100_000  # scalars, lists and mappings after expanding aliases
MAX_DEPTH = 64


def load_yaml_with_lines(text: str, filename: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML; return the data and a map from key path to 1-based line."""
    from synthforge.errors import UserError

    if len(text) > MAX_RECIPE_CHARS:
        raise UserError(f"recipe is {len(text):,} characters, over the limit of {MAX_RECIPE_CHARS:,}", file=filename,
                        hint="keep long value lists in values files: variables: {NAME: {file: values.txt}}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_size(node, filename)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if mark is not None and mark.line >= len(text.splitlines()):  # failed at end of file: point where it began
            mark = exc.context_mark or mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise UserError(
            f"YAML syntax error: {problem}",
            file=filename,
            line=mark.line + 1 if mark else None,
            hint="check indentation, colons and quotes on this line or the one above",
        ) from None
    except yaml.YAMLError as exc:
        raise UserError(f"YAML error: {exc}", file=filename) from None
    except RecursionError:
        raise UserError(f"YAML nested too deeply (limit {MAX_DEPTH} levels)", file=filename) from None
    finally:
        loader.dispose()
    lines: dict[Path_, int] = {}
    if node is not None:
        _record_lines(node, (), lines, filename)
    return data, lines


def _check_size(root: yaml.Node, filename: str) -> None:
    """Refuse a document that expands (through aliases) past MAX_VALUES or nests past MAX_DEPTH."""
    from synthforge.errors import UserError

    sizes: dict[int, int] = {}  # id(node) -> expanded size; an alias is a second reference to one node
    active: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        line = node.start_mark.line + 1
        if depth > MAX_DEPTH or id(node) in active:
            problem = "refers to itself through an alias" if id(node) in active else f"nests deeper than {MAX_DEPTH} levels"
            raise UserError(f"YAML {problem}", file=filename, line=line, hint="simplify the structure")
        active.add(id(node))
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        total = 1 + sum(size(child, depth + 1) for child in children)
        active.discard(id(node))
        if total > MAX_VALUES:
            raise UserError(f"YAML expands to more than {MAX_VALUES:,} values (through aliases *name)", file=filename,
                            line=line, hint="an alias repeats a block: repeat fewer, or keep long lists in files")
        sizes[id(node)] = total
        return total

    size(root, 0)


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
