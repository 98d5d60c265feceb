"""Key completeness, table-driven over every registered step kind.

For each kind (read from the registry: a new kind is covered without editing this file) and each
example of its Params (`model_config["json_schema_extra"]["examples"]`, else its required fields
filled in), through the real recipe resolution and `build_graph`:
  - changing any field the output depends on changes the step's key;
  - changing any runtime-only field (`Field(exclude=True)`, at any depth) does not;
  - the code version, the recipe seed, every upstream input and every file hashed for the key
    (FilePath fields, model files, backend identity files) each change the key;
  - declared versions (LLM sampler, metrics code) change the keys of the kinds that use them.
"""

from __future__ import annotations

import json
import typing
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ValidationError

from synthforge import keys
from synthforge.graph import build_graph
from synthforge.errors import UserError
from synthforge.recipe.fields import file_locations, ref_fields, set_at, strings_in
from synthforge.recipe.resolve import load_recipe
from synthforge.steps import STEP_KINDS, step_class
from synthforge.stepapi import FILE, REF
from tests.tiny_models import tiny_chat_model_dir

OTHER_UPSTREAM = "other_upstream"
ENTRY_OPTION: dict[tuple, tuple] = {}  # a path inside a mapping of models -> the option it sets, with the entry as '*'
COVERED: Counter = Counter()  # (kind, ingredient) pairs checked, for the closing count


# -- a recipe around one step ------------------------------------------------------------------
class StepBench:
    """Writes a recipe with one `target` step of `kind` (upstream steps are loads of their own csv) and keys it."""

    def __init__(self, folder: Path, kind: str):
        self.folder, self.kind = folder, kind
        self.cls = step_class(kind)
        self.seed = 7

    def upstream_names(self, params: dict[str, Any]) -> set[str]:
        names = set()
        for field in ref_fields(self.cls.Params):
            names |= {text.split(".")[0] for _, text in strings_in(params.get(field))}
        return names

    def key(self, params: dict[str, Any]) -> str:
        validated = self.cls.Params.model_validate(params)
        for _, text in file_locations(validated):
            path = self.folder / text
            if not path.exists():
                path.write_text("text,label\nfirst row,a\nsecond row,b\n")
        upstream = self.upstream_names(params) | {OTHER_UPSTREAM}  # OTHER_UPSTREAM: what a changed Ref may name
        steps = {name: {"kind": "load", "path": f"{name}.csv"} for name in sorted(upstream)}
        for name in steps:
            csv = self.folder / f"{name}.csv"
            if not csv.exists():
                csv.write_text(f"text,label\n{name} one,a\n{name} two,b\n")
        steps["target"] = {"kind": self.kind, **_plain(params)}
        recipe = self.folder / "recipe.yaml"
        recipe.write_text(json.dumps({"name": "keys", "seed": self.seed, "steps": steps}))
        graph = build_graph(load_recipe(recipe))
        return graph.keys["default"]["target"]


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {name: _plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def examples(params_model: type[BaseModel]) -> list[dict[str, Any]]:
    declared = (params_model.model_config.get("json_schema_extra") or {}).get("examples")
    if declared:
        return [dict(e) for e in declared]
    required = {name: _filler(_annotation(info)) for name, info in params_model.model_fields.items() if info.is_required()}
    return [required]


def _filler(annotation: Any) -> Any:
    options = candidates(annotation, None)
    return options[0] if options else "x"


# -- ways to change a value ----------------------------------------------------------------------
def candidates(annotation: Any, value: Any) -> list[Any]:
    """Valid-looking values of `annotation` that differ from `value`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        base, *metadata = args
        if any(m is REF for m in metadata):
            return [OTHER_UPSTREAM] if value != OTHER_UPSTREAM else ["target_input"]
        if any(m is FILE for m in metadata):
            return ["other_file.csv"]
        return candidates(base, value)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        found = [None] if value is not None and type(None) in args else []
        for arg in args:
            if arg is not type(None):
                found += [c for c in candidates(arg, value) if c not in found]
        return found
    if origin is Literal:
        return [a for a in args if a != value]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [examples(annotation)[0]] if value is None else []
    if annotation is bool:
        return [not value] if isinstance(value, bool) else [True, False]
    if annotation is int:
        return [value + 1, value + 2, value - 1] if isinstance(value, int) and not isinstance(value, bool) else [1, 2, 3]
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [v for v in (value / 2, value + 0.05, value * 0.9, 0.5) if v != value]
        return [0.5, 0.25, 1.0]
    if annotation is str:  # latin-1: a valid value for string fields that must name something (load.encoding)
        return [f"{value} changed" if value else "changed", str(tiny_chat_model_dir()), "changed", "latin-1"]
    if origin is list:
        value = value if isinstance(value, list) else None
        item = args[0] if args else str
        fresh = [c for c in candidates(item, None) if c is not None]
        if not value:
            return [fresh[:2], *([c] for c in fresh)]
        first_changed = [[c, *value[1:]] for c in candidates(item, value[0]) if c is not None]  # same length
        return [value + fresh[:1], value[:-1], *first_changed]
    if origin is dict:
        value = value if isinstance(value, dict) else None
        item = args[1] if args else str
        extra = [c for c in candidates(item, None) if c is not None][:1]
        added = [{**(value or {}), "extra_name": extra[0]}] if extra else []
        if not value:
            return added
        first = next(iter(value))  # same names, the first one's value changed
        return added + [{**value, first: c} for c in candidates(item, value[first]) if c is not None]
    if annotation is Any:
        return ["changed"] if value != "changed" else ["other"]
    return []


def leaves(model: type[BaseModel], value: dict[str, Any], prefix: tuple = ()) -> list[tuple[tuple, Any, bool]]:
    """(path, annotation, runtime-only) of every field, nested models included."""
    found = []
    for name, info in model.model_fields.items():
        path = prefix + (name,)
        current = value.get(name)
        nested = _nested_model(info.annotation, current)
        if nested is not None and isinstance(current, dict) and not info.exclude:
            found += leaves(nested, current, path)
        else:
            found.append((path, _annotation(info), bool(info.exclude)))
            found += _entry_leaves(info, current, path)
    return found


def _entry_leaves(info, current: Any, path: tuple) -> list[tuple[tuple, Any, bool]]:
    """The set fields of each model in a mapping of models (generate's `fields`): every one must change the key."""
    if info.exclude or not isinstance(current, dict):
        return []
    models = {name: _nested_model(info.annotation, value) for name, value in current.items() if isinstance(value, dict)}
    if not current or len(models) < len(current) or None in models.values():
        return []
    found = []
    for name, model in models.items():
        entry = current[name]
        set_fields = {k: v for k, v in entry.items() if v is not None}
        found += [leaf for leaf in leaves(model, set_fields, path + (name,)) if leaf[0][len(path) + 1] in set_fields]
    for leaf_path, _, _ in found:  # each option must vary in some entry (a category's `sample` cannot, a uniform's can)
        ENTRY_OPTION[leaf_path] = path + ("*",) + leaf_path[len(path) + 1:]
    return found


def _annotation(info) -> Any:
    """A field's type with its markers (pydantic moves `Annotated` metadata such as REF off the annotation)."""
    return typing.Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


def _nested_model(annotation: Any, current: Any) -> type[BaseModel] | None:
    for model in keys.model_types(annotation):
        try:
            model.model_validate(current)
            return model
        except ValidationError:
            continue
    return None


def kind_cases() -> list[str]:
    return sorted(STEP_KINDS)


def _full(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    return _plain(model.model_validate(example))


@pytest.mark.parametrize("kind", kind_cases())
def test_every_field_changes_the_key_and_no_runtime_field_does(kind, tmp_path):
    bench = StepBench(tmp_path, kind)
    params_model = bench.cls.Params
    varied: dict[tuple, bool] = {}
    for example in examples(params_model):
        base = _full(params_model, example)
        base_key = bench.key(base)
        for path, annotation, runtime in leaves(params_model, base):
            current = _get(base, path)
            for candidate in candidates(annotation, current):
                changed = set_at(base, path, candidate)
                try:
                    if _full(params_model, changed) == base:
                        continue  # normalized back to the same params
                    key = bench.key(changed)
                except (ValidationError, UserError, ValueError):
                    continue  # not a valid recipe; try another value
                if runtime:
                    assert key == base_key, f"{kind}: runtime-only field {'.'.join(path)} changed the key"
                else:
                    assert key != base_key, f"{kind}: field {'.'.join(path)} = {candidate!r} did not change the key"
                varied[ENTRY_OPTION.get(path, path)] = True
                COVERED[(kind, "field " + ".".join(map(str, path)))] += 1
                break
            else:
                varied.setdefault(ENTRY_OPTION.get(path, path), False)
    constant = {p for p, annotation, _ in leaves(params_model, base) if typing.get_origin(annotation) is Literal
                and len(typing.get_args(annotation)) == 1}  # a discriminator: fixed by its model, dumped into the key
    stuck = sorted(".".join(map(str, p)) for p, ok in varied.items() if not ok and p not in constant)
    assert not stuck, f"{kind}: no example lets these fields vary: {stuck} (add Params examples that do)"


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


@pytest.mark.parametrize("kind", kind_cases())
def test_version_seed_inputs_and_files_change_the_key(kind, tmp_path, monkeypatch):
    bench = StepBench(tmp_path, kind)
    example = _full(bench.cls.Params, examples(bench.cls.Params)[0])
    hashed: list[Path] = []
    real_file_hash = keys.file_hash

    def recording(path, cache=None):
        hashed.append(Path(path))
        return real_file_hash(path, cache)

    monkeypatch.setattr(keys, "file_hash", recording)
    base = bench.key(example)

    monkeypatch.setattr(bench.cls, "version", f"{bench.cls.version}+changed")
    assert bench.key(example) != base, f"{kind}: the code version is not in the key"
    monkeypatch.undo()
    monkeypatch.setattr(keys, "file_hash", real_file_hash)
    COVERED[(kind, "code version")] += 1

    bench.seed = 8
    assert bench.key(example) != base, f"{kind}: the recipe seed is not in the key"
    bench.seed = 7
    COVERED[(kind, "seed")] += 1

    unrelated = tmp_path / f"{OTHER_UPSTREAM}.csv"
    for path in sorted(set(hashed) - {unrelated}):  # FilePath fields, upstream data, model and backend identity files
        monkeypatch.setattr(keys, "file_hash", lambda p, cache=None, target=path: "edited" if Path(p) == target else real_file_hash(p))
        assert bench.key(example) != base, f"{kind}: the content of {path.name} is not in the key"
        monkeypatch.setattr(keys, "file_hash", real_file_hash)
        COVERED[(kind, f"file {path.name}")] += 1

    for name in sorted(bench.upstream_names(example)):
        csv = tmp_path / f"{name}.csv"
        csv.write_text(csv.read_text() + f"{name} three,a\n")
        assert bench.key(example) != base, f"{kind}: upstream {name} is not in the key"
        COVERED[(kind, f"input {name}")] += 1


DECLARED_VERSIONS = [
    ("generate", "synthforge.backends.transformers_llm", "SAMPLER_VERSION"),
    ("select", "synthforge.metrics", "METRICS_VERSION"),
]


@pytest.mark.parametrize("kind,module,name", DECLARED_VERSIONS)
def test_declared_versions_change_the_key(kind, module, name, tmp_path, monkeypatch):
    import importlib

    bench = StepBench(tmp_path, kind)
    example = _full(bench.cls.Params, examples(bench.cls.Params)[0])
    base = bench.key(example)
    monkeypatch.setattr(importlib.import_module(module), name, "changed")
    assert bench.key(example) != base
    COVERED[(kind, name)] += 1


def test_endpoint_credentials_stay_out_of_keys_and_lockfiles(tmp_path):
    bench = StepBench(tmp_path, "generate")
    example = examples(bench.cls.Params)[1]
    assert example["backend"]["type"] == "openai"
    secret = set_at(example, ("backend", "base_url"), "http://127.0.0.1:8000/v1?api_key=hunter3")
    plain_key = bench.key(example)
    assert bench.key(secret) == plain_key
    recipe = json.loads((tmp_path / "recipe.yaml").read_text())
    graph = build_graph(load_recipe(tmp_path / "recipe.yaml"))
    assert "hunter" in json.dumps(recipe) and "hunter" not in json.dumps(graph.to_lock({}).to_json())
    with pytest.raises(UserError) as refused:  # user:password@ is refused outright (keys go in api_key_env), unechoed
        bench.key(set_at(example, ("backend", "base_url"), "http://user:hunter2@127.0.0.1:8000/v1"))
    assert "credentials in base_url are refused" in str(refused.value) and "hunter" not in str(refused.value)


def test_model_files_are_one_set_for_every_model_user(tmp_path, tiny_encoder):
    import shutil

    from synthforge.backends.embedder import model_files as embedder_files
    from synthforge.backends.transformers_llm import identity_files
    from synthforge.steps.train import TrainParams, TrainStep

    folder = tmp_path / "model"
    shutil.copytree(tiny_encoder, folder)
    (folder / "README.md").write_text("notes")  # not part of what the model computes
    expected = keys.model_files(folder)
    assert expected and all(p.suffix != ".md" for p in expected)
    assert embedder_files(str(folder)) == expected == identity_files(str(folder))
    assert TrainStep().files_read(TrainParams(train="a", test="b", model=str(folder))) == expected


def test_coverage_count(request):
    """Runs last in this module: how many (kind, ingredient) pairs the tests above checked."""
    if len(COVERED) == 0:
        pytest.skip("run with the whole module to count")
    kinds = {kind for kind, _ in COVERED}
    print(f"\nkey completeness: {len(COVERED)} (kind, ingredient) pairs over {len(kinds)} kinds")
    assert kinds >= set(STEP_KINDS)
