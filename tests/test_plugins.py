"""Plugins through real installed entry points: a package on sys.path with a `.dist-info` that declares
a step kind (`synthforge.steps`) and an LLM backend (`synthforge.backends`); a recipe uses both.
The same package as a local module named by $SYNTHFORGE_PLUGINS registers them when imported."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A third-party plugin: imports only the plugin-facing surfaces."""
from typing import Literal

from synthforge.backends.llm import BackendParams, GenerationResponse
from synthforge.steps.base import Ref, Step, StepContext, StepParams, StepResult


class ShoutParams(StepParams):
    input: Ref
    marks: int = 1


class ShoutStep(Step):
    kind = "shout"
    Params = ShoutParams

    def run(self, ctx: StepContext) -> StepResult:
        import polars as pl

        frame = ctx.inputs["input"].frame()
        return StepResult(frame.with_columns(pl.col("text").str.to_uppercase() + "!" * ctx.params.marks))


class EchoConfig(BackendParams):
    type: Literal["echo"]
    prefix: str = "echo"


class EchoLLM:
    type = "echo"
    Config = EchoConfig

    def __init__(self, prefix):
        self.prefix = prefix

    @classmethod
    def identity_of(cls, config):
        return {"prefix": config.prefix}

    @classmethod
    def from_config(cls, config, **runtime):
        return cls(config.prefix)

    def identity(self):
        return {"prefix": self.prefix}

    def generate(self, requests, on_response=None, on_tokens=None):
        responses = []
        for index, request in enumerate(requests):
            prompt = request.messages[-1][1]
            response = GenerationResponse(f"{self.prefix} {request.seed}: {prompt}", len(prompt.split()), 3)
            if on_response:
                on_response(index, response)
            responses.append(response)
        return responses
'''

ENTRY_POINTS = """
[synthforge.steps]
shout = sfdemo_plugin:ShoutStep

[synthforge.backends]
echo = sfdemo_plugin:EchoLLM
"""

RECIPE = """
name: plugged
seed: 3
steps:
  gen:
    kind: generate
    n: 4
    labels: [good, bad]
    template: "Write a {{ label }} review."
    backend: {type: echo, prefix: parrot}
  loud:
    kind: shout
    input: gen
    marks: 2
"""


REGISTER = """
from synthforge.backends.llm import register_backend
from synthforge.steps import register

register("shout", "sfdemo_plugin:ShoutStep")
register_backend("echo", "sfdemo_plugin:EchoLLM")
"""


def write_plugin(site: Path, installed: bool) -> Path:
    """Installed: the package and its dist-info (METADATA, entry_points.txt) on a path entry. Local: a module
    that registers itself when $SYNTHFORGE_PLUGINS names it."""
    (site / "sfdemo_plugin").mkdir(parents=True)
    (site / "sfdemo_plugin" / "__init__.py").write_text(PLUGIN + ("" if installed else REGISTER))
    if installed:
        dist = site / "sfdemo_plugin-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sfdemo-plugin\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


@pytest.fixture
def plugin_site(tmp_path: Path) -> Path:
    return write_plugin(tmp_path / "site", installed=True)


def plugin_env(site: Path, cache: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "SYNTHFORGE_CACHE": str(cache)}
    env.pop("SYNTHFORGE_PLUGINS", None)
    if not (site / "sfdemo_plugin-0.1.dist-info").exists():
        env["SYNTHFORGE_PLUGINS"] = "sfdemo_plugin"
    return env


def synthforge(site: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synthforge", *args], env=plugin_env(site, cache), capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("installed", [True, False], ids=["entry-points", "SYNTHFORGE_PLUGINS"])
def test_a_plugin_provides_a_step_kind_and_a_backend(tmp_path, installed):
    site = write_plugin(tmp_path / "site", installed)
    recipe = tmp_path / "plugged.yaml"
    recipe.write_text(textwrap.dedent(RECIPE).lstrip())
    cache = tmp_path / "cache"
    built = synthforge(site, cache, "build", str(recipe), "--no-progress", "--jobs", "2")  # kinds found in workers too
    assert built.returncode == 0, built.stderr
    read = ("import json, sys, synthforge as sf; r = sf.open(sys.argv[1]); "
            "print(json.dumps({'texts': sorted(r.table('loud')['text'].to_list()), 'key': r.key('gen')}))")
    out = json.loads(subprocess.run([sys.executable, "-c", read, str(recipe)], env=plugin_env(site, cache),
                                    capture_output=True, text=True, check=True).stdout)
    assert len(out["texts"]) == 4
    assert all(text.startswith("PARROT ") and text.endswith("REVIEW.!!") for text in out["texts"])
    again = synthforge(site, cache, "build", str(recipe), "--no-progress")
    assert again.returncode == 0 and re.search(r"^loud\s+1\s+\w+\s+cached", again.stdout, re.M), again.stdout
    # the plugin backend's config enters the key like a built-in's
    recipe.write_text(recipe.read_text().replace("prefix: parrot", "prefix: myna"))
    plan = synthforge(site, cache, "plan", str(recipe))
    assert plan.returncode == 0, plan.stderr
    assert re.search(r"^run\s+gen\s.*backend\.prefix changed from parrot to myna", plan.stdout, re.M), plan.stdout
    assert out["key"][:12] not in plan.stdout


@pytest.mark.parametrize(("change", "message"), [
    ("kind: shout", ("kind: shoot", "steps.loud.kind: unknown step kind 'shoot' (did you mean 'shout'?)")),
    ("type: echo", ("type: ecko", "steps.gen.backend.type: unknown backend type 'ecko' (did you mean 'echo'?)")),
    ("type: echo", ("type: zzz", "unknown backend type 'zzz' (known types: echo, openai, transformers)")),
    ("type: echo", ("tipe: echo", "steps.gen.backend: missing 'type' (add e.g. 'type: transformers' "
                                  "(types: transformers, openai, echo))")),
    ("    kind: shout\n", ("", "steps.loud: missing 'kind' (add e.g. 'kind: load' "
                               "(kinds: load, split, generate, judge, embed, select, mix, train, shout))")),
])
def test_error_hints_list_plugin_kinds_and_types(plugin_site, tmp_path, change, message):
    replacement, expected = message
    recipe = tmp_path / "plugged.yaml"
    recipe.write_text(textwrap.dedent(RECIPE).lstrip().replace(change, replacement))
    result = synthforge(plugin_site, tmp_path / "cache", "plan", str(recipe))
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


BUILTIN = """
name: r
steps:
  gen:
    kind: generate
    n: 2
    labels: [good]
    template: "Write a {{ label }} review."
    backend:
"""


@pytest.mark.parametrize(("backend", "message"), [
    ("      type: openaii\n      base_url: http://127.0.0.1:9/v1\n      model: m\n",
     "r.yaml:9: steps.gen.backend.type: unknown backend type 'openaii' (did you mean 'openai'?)"),
    ("      base_url: http://127.0.0.1:9/v1\n      model: m\n",
     "r.yaml:8: steps.gen.backend: missing 'type' (add e.g. 'type: transformers' (types: transformers, openai))"),
    ("      type: openai\n      base_url: http://127.0.0.1:9/v1\n      model: m\n      concurency: 3\n",
     "r.yaml:12: steps.gen.backend.concurency: unknown field 'concurency' (did you mean 'concurrency'?)"),
    ("      type: transformers\n      batch_size: 0\n",
     "r.yaml:10: steps.gen.backend.batch_size: Input should be greater than or equal to 1 (got 0) "
     "(expected prompts decoded together, a positive integer; runtime-only, never in a key)"),
])
def test_the_backend_registry_validates_built_in_types_with_located_errors(tmp_path, backend, message, monkeypatch):
    from synthforge.errors import UserError
    from synthforge.recipe.resolve import load_recipe

    monkeypatch.delenv("SYNTHFORGE_PLUGINS", raising=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(BUILTIN).lstrip() + backend)
    with pytest.raises(UserError) as caught:
        load_recipe(recipe)
    assert str(caught.value) == message.replace("r.yaml", str(recipe))


def test_a_built_in_backend_block_keys_as_before():
    """The registry changed how a block is validated, not what it dumps: every field but runtime-only ones."""
    from synthforge.steps.generate import GenerateParams

    params = GenerateParams.model_validate({"n": 1, "labels": ["a"], "template": "x", "backend": {
        "type": "openai", "base_url": "http://h:1/v1", "model": "m", "concurrency": 3, "api_key_env": "K",
        "endpoints": ["http://h2:1/v1"]}})
    assert params.model_dump(mode="json")["backend"] == {"type": "openai", "base_url": "http://h:1/v1", "model": "m"}
    default = GenerateParams.model_validate({"n": 1, "labels": ["a"], "template": "x"}).model_dump(mode="json")
    assert default["backend"] == {"type": "transformers", "model": "smollm2", "gguf_file": None}
