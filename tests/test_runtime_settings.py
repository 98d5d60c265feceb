"""Every runtime setting of every step kind resolves by one rule (`Runtime.resolve`, docs/recipes.md):
the command line when given, else the recipe's field (a step's own before its backend's), else the default."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from synthforge.errors import UserError
from synthforge.stepapi import Runtime
from tests.generate_helpers import make_ctx as generate_ctx
from tests.generate_helpers import write_entry


class _Stop(Exception):
    """Raised by a recorder once the step handed over its settings: nothing heavy runs."""


# (command line, recipe fields, expected): the three tiers, and "auto"/None meaning "not given"
def test_the_rule_itself():
    assert Runtime(batch_size=4).resolve("batch_size", 16, 8, default=64) == 4
    assert Runtime().resolve("batch_size", None, 8, default=64) == 8
    assert Runtime().resolve("batch_size", 16, 8, default=64) == 16
    assert Runtime().resolve("batch_size", None, None, default=64) == 64
    assert Runtime(device="auto").resolve("device", "auto", "cuda:1", default="auto") == "cuda:1"
    assert Runtime(device="cpu").resolve("device", "cuda:1", default="auto") == "cpu"
    assert Runtime(max_requests=0).resolve("max_requests", 100) == 0  # 0 is given, not unset


# -- generate: device, batch_size (transformers), concurrency (openai) ---------------------------
def _generate_settings(tmp_path, monkeypatch, runtime: Runtime, step_fields: dict, backend: dict) -> dict:
    import synthforge.backends.llm as llm

    seen = {}

    def recorder(config, **options):
        seen.update(options)
        raise _Stop

    monkeypatch.setattr(llm, "make_backend", recorder)
    params = {"n": 2, "labels": ["a", "b"], "template": "write {{ label }}", "backend": backend, **step_fields}
    from synthforge.steps.generate import GenerateStep

    with pytest.raises(_Stop):
        GenerateStep().run(generate_ctx(tmp_path, params, runtime=runtime))
    return seen


TRANSFORMERS = {"type": "transformers", "model": "smollm2"}
OPENAI = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}


@pytest.mark.parametrize("setting, backend, cli, step_value, backend_value, expected", [
    ("batch_size", TRANSFORMERS, 4, 16, 2, 4),  # the command line wins
    ("batch_size", TRANSFORMERS, None, 16, 2, 16),  # then the step's field
    ("batch_size", TRANSFORMERS, None, None, 2, 2),  # then the backend's
    ("batch_size", TRANSFORMERS, None, None, None, 8),  # then the backend's default
    ("device", TRANSFORMERS, "cpu", "cuda:1", "cuda:2", "cpu"),
    ("device", TRANSFORMERS, "auto", "cuda:1", "cuda:2", "cuda:1"),
    ("device", TRANSFORMERS, "auto", None, "cuda:2", "cuda:2"),
    ("device", TRANSFORMERS, "auto", None, None, "auto"),
    ("concurrency", OPENAI, 3, 5, 7, 3),
    ("concurrency", OPENAI, None, 5, 7, 5),
    ("concurrency", OPENAI, None, None, 7, 7),
    ("concurrency", OPENAI, None, None, None, 8),
])
def test_generate_follows_the_rule(tmp_path, monkeypatch, setting, backend, cli, step_value, backend_value, expected):
    step_fields = {setting: step_value} if step_value is not None else {}
    backend = {**backend, **({setting: backend_value} if backend_value is not None else {})}
    runtime = Runtime(progress=False, **{setting: cli})
    assert _generate_settings(tmp_path, monkeypatch, runtime, step_fields, backend)[setting] == expected


# -- embed: device (command line only), batch_size ------------------------------------------------
def _embed_worker_settings(tmp_path, monkeypatch, runtime: Runtime, **fields) -> tuple[str, int]:
    import synthforge.steps.embed as embed
    from synthforge.cache import Cache
    from synthforge.stepapi import StepContext

    seen = {}

    def recorder(model, device, max_length, batch_size):
        seen.update(device=device, batch_size=batch_size)
        raise _Stop

    monkeypatch.setattr(embed, "EmbedWorker", recorder)
    table = write_entry(tmp_path / "in", [{"id": "r0", "text": "hello", "label": "a"}])
    ctx = StepContext(step="emb", recipe="r", params=embed.EmbedParams(input="rows", **fields), seed=0, key="k",
                      inputs={"input": table}, workdir=tmp_path / "work", cache=Cache(tmp_path / "cache"), runtime=runtime)
    with pytest.raises(_Stop):
        embed.EmbedStep().run(ctx)
    return seen["device"], seen["batch_size"]


@pytest.mark.parametrize("cli_batch, recipe_batch, expected", [(4, 16, 4), (None, 16, 16), (None, None, 64)])
def test_embed_batch_size_follows_the_rule(tmp_path, monkeypatch, cli_batch, recipe_batch, expected):
    fields = {"batch_size": recipe_batch} if recipe_batch is not None else {}
    assert _embed_worker_settings(tmp_path, monkeypatch, Runtime(progress=False, batch_size=cli_batch), **fields)[1] == expected


@pytest.mark.parametrize("cli_device, expected", [("cpu", "cpu"), ("auto", "auto")])
def test_embed_device_follows_the_rule(tmp_path, monkeypatch, cli_device, expected):
    assert _embed_worker_settings(tmp_path, monkeypatch, Runtime(progress=False, device=cli_device))[0] == expected


# -- train: device, batch_size -------------------------------------------------------------------
@pytest.mark.parametrize("cli, recipe, expected", [
    ({"device": "cpu", "batch_size": 4}, {"device": "cuda:1", "batch_size": 16}, ("cpu", 4)),
    ({}, {"device": "cuda:1", "batch_size": 16}, ("cuda:1", 16)),
    ({}, {}, ("auto", 64)),
])
def test_train_follows_the_rule(monkeypatch, cli, recipe, expected):
    import synthforge.backends.devices as devices
    from synthforge.steps.train import TrainParams, _runtime

    monkeypatch.setattr(devices, "pick_device", lambda device: device)  # no CUDA needed to see the choice
    params = TrainParams(train="t", test="u", **recipe)
    assert _runtime(SimpleNamespace(runtime=Runtime(**cli)), params) == expected


# -- build-wide: shard rows, LLM budget ----------------------------------------------------------
@pytest.mark.parametrize("cli, expected", [(3, 3), (None, 4096)])
def test_shard_rows_follow_the_rule(cli, expected):
    from synthforge.sharding import shard_rows

    assert shard_rows(Runtime(shard_rows=cli)) == expected


def test_budget_limits_follow_the_rule(write_recipe, data_csv):
    from synthforge.building import check_budget
    from synthforge.graph import build_graph
    from synthforge.planning import PlanItem
    from synthforge.recipe.resolve import load_recipe

    recipe = write_recipe(f"""
        name: budget
        budget: {{max_requests: 5}}
        steps:
          gen:
            kind: generate
            n: 10
            labels: [a, b]
            template: write {{{{ label }}}}
            backend: {OPENAI}
        """)
    graph = build_graph(load_recipe(recipe))
    items = [PlanItem(node, "run", []) for node in graph.nodes.values()]
    with pytest.raises(UserError, match="over the budget of 5"):
        check_budget(graph, items, Runtime())  # the recipe's field
    check_budget(graph, items, Runtime(max_requests=100))  # the command line wins
    with pytest.raises(UserError, match="over the budget of 1"):
        check_budget(graph, items, Runtime(max_requests=1))
