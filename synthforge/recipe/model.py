"""The recipe schema (top level; each step's fields are validated by its kind's Params)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from synthforge.stepapi import checked_seed

STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


DEFAULT_MAX_REQUESTS = 100_000  # the GPU-sized study (pool=20000) fits, with replicates
DEFAULT_MAX_TOKENS = 50_000_000


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_requests: int = Field(DEFAULT_MAX_REQUESTS, ge=0, description="the most LLM requests one build may plan")
    max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=0, description="the most LLM tokens (prompt + new) one build may plan")


class RecipeModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a name for the recipe, e.g. 'rt-demo'")
    seed: int | str = Field(
        0,
        description="an integer seed (0 to 2^31 - 1), or a `${var}` placeholder resolved per variant; it enters every seeded step's key",
    )
    replicates: int = Field(
        1,
        ge=1,
        description="rerun the whole design over N independent draws: each variant gets a `replicate` var (0..N-1) "
        "and replicate-specific seeds for its seeded steps (split's training rows, generate, select, mix, train)",
    )
    vary_test: bool = Field(
        False, description="with replicates: also redraw split's test and validation rows per replicate (default: fixed)"
    )
    description: str = Field("", description="free text")
    license: str = Field(
        "unknown", description="the license of the data this recipe builds, as a Hugging Face license id (e.g. cc-by-4.0, "
        "mit, other); exported dataset cards state it (default: unknown)",
    )
    language: list[str] = Field(
        default_factory=list, description="the languages of the rows as ISO 639-1 codes, e.g. [en]; exported dataset cards state them"
    )
    vars: dict[str, Any] = Field(default_factory=dict, description="a mapping of variable names to default values")
    matrix: dict[str, list[Any]] = Field(
        default_factory=dict, description="a mapping of variable names to lists of values, one variant per combination"
    )
    steps: dict[str, dict[str, Any]] = Field(description="a mapping of step names to step configs, each with a 'kind'")
    budget: Budget = Field(default_factory=Budget, description="max_requests and max_tokens a build may plan (never in a key)")
    tune: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="a mapping of generate steps to the search `synthforge tune` runs on them: targets, space, "
        "reference, probe_rows, probes (docs/tune.md); never in a key",
    )

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_int_or_placeholder(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError("seed must be a valid integer or a ${var} placeholder")
        if isinstance(value, str) and not re.fullmatch(r"-?\d+|\$\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}", value.strip()):
            raise ValueError("seed must be a valid integer or a ${var} placeholder")
        value = int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else value
        return checked_seed(value) if isinstance(value, int) else value

    @field_validator("language", mode="before")
    @classmethod
    def _one_language(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # `language: en`

    @field_validator("vars", "matrix", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return {} if value is None else value  # `matrix:` with nothing under it

    @field_validator("vars", "matrix")
    @classmethod
    def _var_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not VAR_NAME.match(str(name)):
                raise ValueError(f"'{name}' is not a valid variable name (letters, digits, underscore)")
        return value

    @field_validator("matrix")
    @classmethod
    def _non_empty(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for name, values in value.items():
            if not values:
                raise ValueError(f"matrix variable '{name}' has no values")
        return value

    @field_validator("steps")
    @classmethod
    def _step_names(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not value:
            raise ValueError("a recipe needs at least one step")
        for name in value:
            if not STEP_NAME.match(str(name)):
                raise ValueError(f"'{name}' is not a valid step name (letters, digits, '_' or '-', no dots)")
        return value
