"""`judge`: score the rows of a table with an LLM against a rubric (a prompt template and a scale).

Each row's prompt is the template rendered with the row's columns (and `labels`, the distinct labels of the
input), followed by the scale's reply instruction (generation/rubric.py). Where the backend has structured
output the reply's JSON Schema goes with the request; every reply is parsed and validated against it. A reply
that fails is asked again (`attempts`, each with its own seed, sampling at `retry_temperature`), and a row
without a valid reply after the last attempt goes to `rejects` with the error. Responses are cached one by
one (generation/responses.py), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import xxhash
from pydantic import ConfigDict, Field, model_validator

from synthforge.backends.llm import (
    BackendConfig,
    BatchSizeOverride,
    ConcurrencyOverride,
    DeviceOverride,
    GenerationRequest,
    TransformersBackendConfig,
)
from synthforge.errors import UserError
from synthforge.generation.rubric import Scale
from synthforge.stepapi import Estimate, Ref, StepContext, StepParams, StepResult
from synthforge.steps.base import Step
from synthforge.steps.rows import EMBEDDING_COLUMN

OPENAI_EXAMPLE = {"type": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "some-model"}


class JudgeParams(StepParams):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"input": "generate", "template": "Rate how well this review fits the label {{ label }}:\n{{ text }}",
         "scale": {"min": 1, "max": 5}, "backend": OPENAI_EXAMPLE, "n": 50},
        {"input": "generate", "template": "Review: {{ text }}\nLabel: {{ label }}", "system": "You check data.",
         "scale": {"criteria": {"fits_label": "the text expresses its label"}, "rationale": False},
         "column": "quality", "attempts": 2, "retry_temperature": 0.5, "temperature": 0.1, "top_p": 0.9,
         "max_new_tokens": 64}]})

    input: Ref = Field(description="the step (or step.table) whose rows are judged")
    template: str = Field(
        description="the jinja2 prompt of one row; it sees every column of the row and `labels` (the input's "
        "distinct labels); the scale's reply instruction is appended"
    )
    system: str | None = Field(None, description="an optional jinja2 system message, seeing the same variables")
    scale: Scale = Field(
        default_factory=Scale,
        description="the verdict asked for: an integer score {min, max} (default 1 to 5), or pass/fail per "
        "criterion {criteria: {name: meaning}}; either with `rationale` (default true)",
    )
    column: str = Field(
        "score", description="the name of the score column; the rationale goes in <column>_rationale and each "
        "pass_fail criterion in <column>_<name>"
    )
    n: int | None = Field(
        None, ge=1, description="judge at most this many rows, a seeded sample by id (default: every row); raising "
        "it adds rows and reuses every cached verdict"
    )
    attempts: int = Field(
        2, ge=1, le=10, description="tries per row before a reply that does not parse or validate sends the row to "
        "rejects (each try its own seed)"
    )
    retry_temperature: float = Field(
        0.7, ge=0, le=2, description="the sampling temperature of tries after the first (a greedy judge asked again "
        "at temperature 0 would answer the same)"
    )
    temperature: float = Field(0.0, ge=0, le=2, description="the sampling temperature of the first try, 0..2 (0: greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="the nucleus-sampling probability mass, in (0, 1]")
    max_new_tokens: int = Field(256, ge=1, description="the most tokens of one reply (a positive integer)")
    backend: BackendConfig = Field(
        default_factory=lambda: TransformersBackendConfig(type="transformers"),
        description="the LLM backend, a mapping with a `type` (transformers or openai) and its fields; its model "
        "identity enters every response key",
    )
    batch_size: BatchSizeOverride = None
    concurrency: ConcurrencyOverride = None
    device: DeviceOverride = None

    @model_validator(mode="after")
    def _templates_parse(self) -> "JudgeParams":
        from synthforge.generation.prompts import PromptTemplate

        if not self.column.isidentifier():
            raise UserError(f"column name '{self.column}' is not usable", field="column", hint="letters, digits and _")
        for field in ("template", "system"):  # syntax now; the variables once the input's columns are known
            source = getattr(self, field)
            if source is not None:
                PromptTemplate(source, field)
        return self


class JudgeStep(Step):
    kind = "judge"
    Params = JudgeParams
    tables = ("rejects",)
    carries_responses = True

    def loads_model(self, params: JudgeParams) -> bool:
        return params.backend.loads_model

    def identity(self, params: JudgeParams) -> dict[str, Any]:
        """The backend's identity, and whether it decodes under the reply's schema (structured output)."""
        from synthforge.backends.llm import backend_identity

        return {"backend": backend_identity(params.backend), "structured_output": type(params.backend).structured_output}

    def estimate(self, params: JudgeParams) -> Estimate | None:
        if params.n is None:
            return None  # the input's size is known only when it runs; the build's budget still caps it
        prompt = (len(params.template) + len(params.system or "")) // 4 + 200  # a row's columns: ~200 tokens
        return Estimate(requests=params.n * params.attempts, tokens=params.n * params.attempts * (prompt + params.max_new_tokens))

    def run(self, ctx: StepContext) -> StepResult:
        return _Judging(ctx).run()


class _Judging:
    """One run of the step."""

    def __init__(self, ctx: StepContext):
        self.ctx = ctx
        self.params: JudgeParams = ctx.params  # type: ignore[assignment]

    def run(self) -> StepResult:
        from synthforge.generation.fields import schema_text
        from synthforge.generation.rubric import reply_instruction, reply_schema

        started = time.perf_counter()
        params = self.params
        frame = self._rows(self.ctx.inputs["input"].frame())
        self._check_columns(frame.columns)
        self.schema = reply_schema(params.scale)
        sent_schema = schema_text(self.schema) if type(params.backend).structured_output else None
        contexts = self._contexts(frame)
        prompts = self._prompts(contexts, reply_instruction(params.scale))
        ids = frame["id"].cast(str).to_list() if "id" in frame.columns else [str(i) for i in range(frame.height)]
        verdicts: list[dict[str, Any] | None] = [None] * frame.height
        failures: list[tuple[str, str]] = [("", "")] * frame.height
        tries = Counter()
        with self._responses() as responses:
            pending = list(range(frame.height))
            for attempt in range(params.attempts):
                requests = [self._request(prompts[i], ids[i], attempt, sent_schema) for i in pending]
                replies = responses.fetch(requests, "judge" if attempt == 0 else f"judge, try {attempt + 1}")
                still = []
                for i, reply in zip(pending, replies):
                    verdict, reason = self._verdict(reply)
                    if verdict is None:
                        failures[i] = (reason, reply.text)
                        still.append(i)
                    else:
                        verdicts[i] = verdict
                        tries[str(attempt + 1)] += 1
                pending = still
            self.backend_meta = {"type": responses.backend.type, **responses.identity()}
            counters = responses.counters()
        data, rejects = self._tables(frame, verdicts, failures)
        meta = self._meta(data, rejects, tries, counters, sent_schema is not None, time.perf_counter() - started)
        return StepResult(data=data, tables={"rejects": rejects}, meta=meta)

    # inputs
    def _rows(self, frame):
        """The rows judged: all, or a seeded sample of n by id (the same rows whatever else changes)."""
        n = self.params.n
        if n is None or frame.height <= n:
            return frame
        if "id" not in frame.columns:
            return frame.head(n)
        import polars as pl

        seed = self.ctx.seed
        ranks = [xxhash.xxh3_64_intdigest(f"{seed}:judge-sample:{row_id}".encode()) for row_id in frame["id"].cast(pl.String)]
        chosen = sorted(range(frame.height), key=ranks.__getitem__)[:n]
        return frame[sorted(chosen)]

    def _check_columns(self, columns: list[str]) -> None:
        from synthforge.generation.prompts import check_template

        provided = set(columns) - {EMBEDDING_COLUMN} | {"labels"}
        for field in ("template", "system"):
            source = getattr(self.params, field)
            if source is not None:
                check_template(source, field, provided)
        clash = sorted(set(self._new_columns()) & set(columns))
        if clash:
            raise UserError(f"the input already has a column '{clash[0]}'", field="column",
                            hint="give this judge's scores another column name, e.g. column: score2")

    def _new_columns(self) -> list[str]:
        scale, column = self.params.scale, self.params.column
        names = [column] + ([f"{column}_rationale"] if scale.rationale else [])
        return names + [f"{column}_{name}" for name in (scale.criteria or {})]

    def _contexts(self, frame) -> list[dict[str, Any]]:
        columns = [c for c in frame.columns if c != EMBEDDING_COLUMN]
        labels = sorted(set(frame["label"].cast(str).to_list())) if "label" in frame.columns else []
        return [{"labels": labels, **row} for row in frame.select(columns).iter_rows(named=True)]

    # requests
    def _prompts(self, contexts: list[dict[str, Any]], instruction: str) -> list[tuple[tuple[str, str], ...]]:
        from synthforge.generation.prompts import PromptTemplate

        user = PromptTemplate(self.params.template, "template")
        system = PromptTemplate(self.params.system, "system") if self.params.system else None
        prompts = []
        for context in contexts:
            messages = [("system", system.render(context))] if system else []
            prompts.append((*messages, ("user", f"{user.render(context)}\n\n{instruction}")))
        return prompts

    def _request(self, messages, row_id: str, attempt: int, schema: str | None) -> GenerationRequest:
        params = self.params
        seed = xxhash.xxh3_64_intdigest(f"{self.ctx.seed}:judge:{row_id}:{attempt}".encode()) & 0x7FFFFFFF
        temperature = params.temperature if attempt == 0 else params.retry_temperature
        return GenerationRequest(tuple(messages), temperature, params.top_p, params.max_new_tokens, seed, schema)

    def _responses(self):
        from synthforge.generation.responses import StepResponses

        params = self.params
        return StepResponses(self.ctx, params.backend, device=params.device, batch_size=params.batch_size,
                             concurrency=params.concurrency)

    def _verdict(self, reply) -> tuple[dict[str, Any] | None, str]:
        from synthforge.generation.rubric import parse_reply

        if reply.rejected is not None:
            return None, reply.rejected
        verdict, reason = parse_reply(reply.text, self.schema)
        return verdict, reason or ""

    # outputs
    def _tables(self, frame, verdicts: list, failures: list[tuple[str, str]]):
        import polars as pl

        from synthforge.generation.rubric import score_of

        scale, column = self.params.scale, self.params.column
        kept = [i for i, verdict in enumerate(verdicts) if verdict is not None]
        chosen = [verdicts[i] for i in kept]
        score_type = pl.Int64 if scale.type == "integer" else pl.Float64
        added = [pl.Series(column, [score_of(scale, v) for v in chosen], dtype=score_type)]
        if scale.rationale:
            added.append(pl.Series(f"{column}_rationale", [str(v["rationale"]) for v in chosen], dtype=pl.String))
        for name in scale.criteria or {}:
            added.append(pl.Series(f"{column}_{name}", [bool(v[name]) for v in chosen], dtype=pl.Boolean))
        data = frame[kept].with_columns(added) if kept else _empty_with(frame, added)
        refused = [i for i, verdict in enumerate(verdicts) if verdict is None]
        rejects = frame[refused].with_columns(
            pl.Series("reason", [failures[i][0] for i in refused], dtype=pl.String),
            pl.Series("raw", [failures[i][1] for i in refused], dtype=pl.String),
        ) if refused else _empty_with(frame, [pl.Series("reason", [], dtype=pl.String), pl.Series("raw", [], dtype=pl.String)])
        return data, rejects

    def _meta(self, data, rejects, tries: Counter, counters: dict, structured: bool, seconds: float) -> dict[str, Any]:
        from synthforge.generation.rubric import score_distribution

        scale, column = self.params.scale, self.params.column
        passes = {name: data[f"{column}_{name}"].to_list() for name in scale.criteria or {}}
        reasons = Counter(reason.split(":")[0] for reason in rejects["reason"].to_list())
        return {
            "rows_in": data.height + rejects.height,
            "rows": data.height,
            "rejected": rejects.height,
            "reject_reasons": dict(reasons),
            "scores": score_distribution(scale, data[column].to_list(), passes),
            "tries_to_valid": dict(sorted(tries.items())),
            "structured_output": structured,
            "backend": self.backend_meta,
            **counters,
            "seconds": round(seconds, 3),
        }


def _empty_with(frame, added: list):
    """No rows, with the input's columns and `added`'s (their types kept)."""
    return frame.head(0).with_columns([series.head(0) for series in added])
