"""`generate`: labelled synthetic rows from an LLM, driven by prompt templates.

Row i's plan (mode, label, variables, few-shot examples, seed) depends only on
(ctx.seed, i), never on n: raising n adds rows and reuses every cached response.

Layout of the n rows with `paraphrase: {fraction: r, per_seed: m}`: row i is a
paraphrase row when floor((i+1)·r) > floor(i·r) (exactly floor(n·r) of the first
n rows). The j-th paraphrase row paraphrases seed item j // m: the (j // m)-th
topic row (source `generated`, generated even if its index is ≥ n) or a
few-shot example picked by a seeded draw (source `few_shot`).

With `fields:` a row is a record: its fields are filled in declaration order, one phase of requests per
generated field over the rows still standing (generation/fields.py declares, checks and samples them).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import xxhash
from pydantic import ConfigDict, Field, field_validator, model_validator

from synthforge.backends.llm import (
    BackendConfig,
    BatchSizeOverride,
    ConcurrencyOverride,
    DeviceOverride,
    GenerationRequest,
    GenerationResponse,
    TransformersBackendConfig,
)
from synthforge.errors import UserError
from synthforge.generation.fields import RecordField, values_file
from synthforge.generation.hygiene import HygieneConfig, apply_hygiene, clean
from synthforge.stepapi import Estimate, FilePath, Labels, Ref, StepContext, StepParams, StepResult
from synthforge.steps.base import Step

DEFAULT_PARAPHRASE_TEMPLATE = (
    "Paraphrase the following text. Keep its meaning and its {{ label }} label; change the wording. "
    "Reply with the paraphrase only.\n\n{{ text }}"
)
RESERVED_COLUMNS = frozenset({
    "id", "text", "label", "source", "mode", "row_seed", "temperature", "top_p", "max_new_tokens",
    "paraphrase_of", "model", "label_description", "labels", "examples", "reason", "raw", "index",
})


# What templates get besides the step's variables: topic rows (template, system) and paraphrase rows.
TOPIC_CONTEXT = frozenset({"label", "label_description", "labels", "examples"})
PARAPHRASE_CONTEXT = frozenset({"text", "label", "label_description", "labels"})


class ValuesFile(StepParams):
    file: FilePath = Field(
        description="a text file of values, one per line, relative to the recipe (blank lines and lines starting "
        "with # are skipped); its content enters the key"
    )


class ParaphraseConfig(StepParams):
    fraction: float = Field(
        ge=0, lt=1, description="the share of the n rows that are paraphrases, in [0, 1): exactly floor(n * fraction) rows"
    )
    per_seed: int = Field(default=3, ge=1, description="paraphrases asked of each seed item (a positive integer)")
    source: Literal["generated", "few_shot"] = Field(
        "generated", description="where seed items come from: `generated` topic rows, or `few_shot` examples"
    )
    template: str = Field(
        DEFAULT_PARAPHRASE_TEMPLATE,
        description="the jinja2 paraphrase prompt; it gets text, label, label_description, labels and, for "
        "generated seeds, the seed's variables",
    )


class GenerateParams(StepParams):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"n": 100, "labels": ["positive", "negative"], "template": "Write a {{ label }} review about {{ topic }}.",
         "variables": {"topic": ["food", "travel"]}, "paraphrase": {"fraction": 0.25}},
        {"n": 100, "labels": {"positive": "a happy review"}, "template": "Write a {{ label }} review.",
         "backend": {"type": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "some-model"}},
        {"n": 10, "labels": ["easy", "hard"], "text": "answer", "system": "You write quiz items.",
         "backend": {"type": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "some-model"},
         "fields": {
             "topic": {"sample": "category", "values": ["maths", "history"], "weights": [2, 1]},
             "points": {"sample": "integer", "low": 2, "high": 8},
             "question": {"template": "Write a {{ label }} {{ topic }} question worth {{ points }} points."},
             "answer": {"template": "Answer: {{ question }}", "hygiene": {"min_chars": 2}},
             "tags": {"template": "Tag: {{ question }}", "json_fields": {"tags": "list[str]"}}}},
        {"n": 5, "labels": ["a", "b"], "backend": {"type": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "m"},
         "fields": {
             "topic": {"sample": "uniform", "low": 0, "high": 1},
             "noise": {"sample": "gaussian", "mean": 0, "std": 1, "decimals": 2},
             "review": {"template": "Review {{ topic }} {{ noise }}", "system": "Be brief.",
                        "json_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}}]})

    n: int = Field(ge=0, description="the number of rows to generate, a non-negative integer counted before hygiene rejects")
    labels: Labels = Field(
        description="a list of labels, or a mapping label -> description (`label_description` in templates); "
        "row i gets label i mod the number of labels"
    )
    template: str | None = Field(
        None, description="the jinja2 template of the user message, rendered in a sandbox per row; required unless "
        "the step declares fields"
    )
    system: str | None = Field(None, description="an optional jinja2 template of the system message")
    variables: dict[str, list[str] | ValuesFile] = Field(
        default_factory=dict,
        description="a mapping of variable names to lists of values or {file: path}; each row draws one value "
        "per variable (seeded), which becomes a column and a template variable",
    )
    num_topics: int | None = Field(
        default=None, ge=1,
        description="a positive integer k: draw only from the first k values of every variable list (default: all)",
    )
    few_shot_from: Ref | None = Field(
        None, description="a step or step.table with id, text and label columns whose rows are shown as `examples`"
    )
    few_shot_k: int = Field(default=0, ge=0, description="the number of few-shot examples drawn (seeded) for each prompt")
    paraphrase: ParaphraseConfig | None = Field(
        None, description="a mapping making a share of the rows paraphrases of seed items (default: none)"
    )
    fields: dict[str, RecordField] | None = Field(
        None, exclude_if=lambda value: value is None,
        description="a record's fields, filled in order: each generated from its own template (which sees earlier "
        "fields) or sampled without an LLM; one output column each (instead of template)",
    )
    text: str | None = Field(
        None, exclude_if=lambda value: value is None,
        description="with fields: the field whose value is the text column (default: the last generated field)",
    )
    temperature: float = Field(default=0.8, ge=0, le=2, description="the sampling temperature, 0..2, where 0 is greedy")
    top_p: float = Field(default=0.95, gt=0, le=1, description="the nucleus-sampling probability mass, in (0, 1]")
    max_new_tokens: int = Field(default=128, ge=1, description="the most tokens generated for one row (a positive integer)")
    backend: BackendConfig = Field(
        default_factory=lambda: TransformersBackendConfig(type="transformers"),
        description="the LLM backend, a mapping with a `type` (transformers or openai) and its fields; its model "
        "identity enters every response key",
    )
    hygiene: HygieneConfig = Field(
        default_factory=HygieneConfig, description="a mapping of the rules that clean responses and reject rows"
    )
    batch_size: BatchSizeOverride = None
    concurrency: ConcurrencyOverride = None
    device: DeviceOverride = None

    @field_validator("labels")
    @classmethod
    def _labels_not_empty(cls, value):
        if not value:
            raise ValueError("declare at least one label")
        return value

    @field_validator("variables")
    @classmethod
    def _no_reserved_names(cls, value):
        clash = sorted(set(value) & RESERVED_COLUMNS)
        if clash:
            raise ValueError(f"variable names {clash} are reserved (they are output columns)")
        return value

    @model_validator(mode="after")
    def _templates_use_what_the_step_provides(self) -> "GenerateParams":
        from synthforge.generation.prompts import check_template

        topic = set(self.variables) | TOPIC_CONTEXT
        if self.fields is not None:
            self._check_record(topic)
            return self
        if self.text is not None:
            raise UserError("text names a field, and this step declares no fields", field="text",
                            hint="remove text, or declare fields:")
        if self.template is None:
            raise UserError("required field is missing", field="template",
                            hint="the user message's jinja2 template, or fields: (one template per field)")
        check_template(self.template, "template", topic)
        if self.system:
            check_template(self.system, "system", topic)
        if self.paraphrase:  # paraphrases of few-shot rows have no topic variables
            seed_variables = set(self.variables) if self.paraphrase.source == "generated" else set()
            check_template(self.paraphrase.template, "paraphrase.template", seed_variables | PARAPHRASE_CONTEXT)
        return self

    def _check_record(self, topic: set[str]) -> None:
        from synthforge.backends.llm import structured_identity
        from synthforge.generation.fields import check_fields
        from synthforge.generation.prompts import check_template

        for option in ("template", "paraphrase"):
            if getattr(self, option) is not None:
                raise UserError(f"{option} does not apply to a step with fields", field=option,
                                hint="give each generated field its own template" if option == "template" else
                                "paraphrases of records are not supported; remove paraphrase")
        if self.system:
            check_template(self.system, "system", topic)
        check_fields(self.fields, topic, set(RESERVED_COLUMNS) | set(self.variables), self.text)
        structured = self.structured_fields()
        if not structured:
            return
        where = f"fields.{structured[0]}." + ("json_fields" if self.fields[structured[0]].json_fields is not None else "json_schema")
        if not type(self.backend).structured_output:
            raise UserError(f"structured output is not supported on the {self.backend.type} backend yet", field=where,
                            hint="use an openai backend (vLLM, llama.cpp's server), or drop the schema")
        try:
            structured_identity(self.backend)  # e.g. a missing decoding library: refused here, where it is located
        except UserError as exc:
            exc.field = where
            raise

    def structured_fields(self) -> list[str]:
        """The generated fields whose replies follow a JSON Schema."""
        return [name for name, spec in (self.fields or {}).items() if spec.generated and spec.reply_schema() is not None]

    def text_field(self) -> str | None:
        """The field that becomes `text` (None without fields)."""
        if self.fields is None:
            return None
        return self.text or [name for name, spec in self.fields.items() if spec.generated][-1]

    @model_validator(mode="before")
    @classmethod
    def _no_paraphrase_at_fraction_zero(cls, data: Any) -> Any:
        """No row is a paraphrase at fraction 0: per_seed, source and template cannot matter, so they do not
        enter the key (a study's r = 0 cells share one generation whatever m says)."""
        if not isinstance(data, dict) or data.get("paraphrase") is None:
            return data
        paraphrase = data["paraphrase"]
        fraction = paraphrase.get("fraction") if isinstance(paraphrase, dict) else getattr(paraphrase, "fraction", None)
        try:
            zero = fraction is not None and float(fraction) == 0.0
        except (TypeError, ValueError):
            return data  # the field's own validation says what is wrong
        return {k: v for k, v in data.items() if k != "paraphrase"} if zero else data


@dataclass
class RowPlan:
    index: int
    mode: str  # "topic" | "paraphrase"
    label: str
    variables: dict[str, str]
    seed: int
    request: GenerationRequest | None = None
    paraphrase_of: str | None = None
    response: GenerationResponse | None = None
    values: dict[str, Any] | None = None  # what its templates get: context, variables and (records) fields so far
    rejected: tuple[str, str] | None = None  # a record's (reason, raw reply) once one of its fields is rejected


# -- seeded, n-independent draws ----------------------------------------------
def row_rng(seed: int, purpose: str, index: int) -> random.Random:
    return random.Random(xxhash.xxh3_64_intdigest(f"{seed}:{purpose}:{index}".encode()))


def row_seed(seed: int, index: int) -> int:
    return xxhash.xxh3_64_intdigest(f"{seed}:row-seed:{index}".encode()) & 0x7FFFFFFF


def is_paraphrase_row(index: int, fraction: Fraction) -> bool:
    return (index + 1) * fraction // 1 > index * fraction // 1


def paraphrase_ordinal(index: int, fraction: Fraction) -> int:
    """How many paraphrase rows come before row `index`."""
    return int(index * fraction // 1)


def topic_rows_before(index: int, fraction: Fraction) -> int:
    return index - paraphrase_ordinal(index, fraction)


def topic_row_index(ordinal: int, fraction: Fraction) -> int:
    """The row index of the `ordinal`-th topic (non-paraphrase) row: the first index with ordinal+1 topic rows up to it."""
    low, high = ordinal, int((ordinal + 1) / (1 - fraction)) + 2
    while low < high:  # topic_rows_before is non-decreasing in the index
        middle = (low + high) // 2
        if topic_rows_before(middle + 1, fraction) >= ordinal + 1:
            high = middle
        else:
            low = middle + 1
    return low


# -- the step -------------------------------------------------------------------
class GenerateStep(Step):
    kind = "generate"
    version = "2"  # 2: labels cycle over topic rows (balanced with paraphrases)
    Params = GenerateParams
    tables = ("rejects",)
    row_parallel = True
    carries_responses = True

    def loads_model(self, params: GenerateParams) -> bool:
        return params.backend.loads_model

    def identity(self, params: GenerateParams) -> dict[str, Any]:
        """The backend's identity: model files and sampler version, or an endpoint's model and URL."""
        from synthforge.backends.llm import backend_identity

        identity = {"backend": backend_identity(params.backend, structured=params.structured_fields() != [])}
        if params.fields is not None:  # their order sets the columns' order, which a key's params (sorted) lose
            identity["field_order"] = list(params.fields)
        return identity

    def plan_note(self, params: GenerateParams) -> str | None:
        total, calls = self.estimate(params).tokens, _llm_fields(params)
        new = f"{params.max_new_tokens:,} new" if calls == 1 else f"{calls} × {params.max_new_tokens:,} new, a request per field"
        return f"~{total:,} tokens ({params.n:,} rows × (~{_prompt_tokens(params):,} prompt + {new})), before response-cache hits"

    def estimate(self, params: GenerateParams) -> Estimate:
        calls = _llm_fields(params)
        return Estimate(requests=params.n * calls, tokens=params.n * (_prompt_tokens(params) + calls * params.max_new_tokens))

    def run(self, ctx: StepContext) -> StepResult:
        return _Generation(ctx).run()


class _Generation:
    """One run of the step; holds what every phase needs."""

    def __init__(self, ctx: StepContext):
        self.ctx = ctx
        self.params: GenerateParams = ctx.params  # type: ignore[assignment]
        self.labels = _label_descriptions(self.params.labels)
        self.values = {name: _values(name, spec, self.params.num_topics) for name, spec in sorted(self.params.variables.items())}
        self.template = _template(self.params.template, "template") if self.params.template is not None else None
        self.system = _template(self.params.system, "system") if self.params.system else None
        self.paraphrase_template = (
            _template(self.params.paraphrase.template, "paraphrase.template") if self.params.paraphrase else None
        )
        self.few_shot = _few_shot_rows(ctx.inputs.get("few_shot_from"))
        self.fraction = Fraction(repr(self.params.paraphrase.fraction)) if self.params.paraphrase else Fraction(0)

    # plans
    def topic_plan(self, index: int) -> RowPlan:
        plan = self.topic_context(index)
        plan.request = self._request(self.template, plan.values, plan.seed)
        return plan

    def topic_context(self, index: int) -> RowPlan:
        """Row `index`'s label, variables and few-shot examples, as `values` (what its templates get)."""
        rng = row_rng(self.ctx.seed, "topic", index)
        # Labels cycle over topic rows, not all rows: paraphrase rows inherit their seed's label,
        # so cycling over every index would give every seed the same label at fraction 1/2.
        topic_ordinal = index - paraphrase_ordinal(index, self.fraction)
        label = list(self.labels)[topic_ordinal % len(self.labels)]
        variables = {name: rng.choice(values) for name, values in self.values.items()}
        plan = RowPlan(index, "topic", label, variables, row_seed(self.ctx.seed, index))
        plan.values = {**variables, "label": label, "label_description": self.labels[label],
                       "labels": list(self.labels), "examples": self._examples(rng)}
        return plan

    def _examples(self, rng: random.Random) -> list[dict[str, str]]:
        if not self.few_shot or not self.params.few_shot_k:
            return []
        picks = rng.sample(range(len(self.few_shot)), min(self.params.few_shot_k, len(self.few_shot)))
        return [self.few_shot[i] for i in picks]

    def paraphrase_plan(self, index: int, seed_item: dict[str, Any]) -> RowPlan:
        label = seed_item["label"]
        variables = dict(seed_item.get("variables", {}))
        context = {**variables, "text": seed_item["text"], "label": label,
                   "label_description": self.labels.get(label, ""), "labels": list(self.labels)}
        plan = RowPlan(index, "paraphrase", label, variables, row_seed(self.ctx.seed, index),
                       paraphrase_of=seed_item["id"])
        plan.request = self._request(self.paraphrase_template, context, plan.seed)
        return plan

    def _request(self, template, context: dict[str, Any], seed: int, system=None, schema: str | None = None) -> GenerationRequest:
        """A chat request at the step's sampling settings, with `system` (a field's) or else the step's system message."""
        system = system or self.system
        messages = []
        if system:
            messages.append(("system", system.render(context)))
        messages.append(("user", template.render(context)))
        return GenerationRequest(tuple(messages), self.params.temperature, self.params.top_p, self.params.max_new_tokens,
                                 seed, schema)

    # running
    def run(self) -> StepResult:
        if self.params.fields is not None:
            return self.run_records()
        started = time.perf_counter()
        n = self.params.n
        topic_indices = [i for i in range(n) if not is_paraphrase_row(i, self.fraction)]
        paraphrase_indices = [i for i in range(n) if is_paraphrase_row(i, self.fraction)]
        topic = {i: self.topic_plan(i) for i in topic_indices}
        seeds_needed = self._paraphrase_seed_ids(paraphrase_indices)
        for i in seeds_needed:  # seed rows past n are generated (and cached) but not output
            topic.setdefault(i, self.topic_plan(i))

        with self._responses() as self.responses:
            self._fetch(list(topic.values()), "topic")
            paraphrases = [self.paraphrase_plan(i, self._seed_item(i, topic)) for i in paraphrase_indices]
            self._fetch(paraphrases, "paraphrase")

        plans = sorted([p for i, p in topic.items() if i < n] + paraphrases, key=lambda p: p.index)
        data, rejects = self._tables(plans)
        meta = self._meta(plans, data, rejects, time.perf_counter() - started)
        return StepResult(data=data, tables={"rejects": rejects}, meta=meta)

    # records (steps with fields)
    def record_plan(self, index: int) -> RowPlan:
        """Row `index`'s label, variables, examples and sampled fields: seeded by (seed, index[, field]) only."""
        from synthforge.generation.fields import sample_value

        plan = self.topic_context(index)
        for name, spec in self.params.fields.items():
            if not spec.generated:
                rng = row_rng(self.ctx.seed, f"field:{name}", index)
                plan.values[name] = sample_value(spec, self.categories.get(name), rng)
        return plan

    def run_records(self) -> StepResult:
        from synthforge.generation.fields import category_values

        started = time.perf_counter()
        fields = self.params.fields
        self.categories = {name: category_values(spec, name) for name, spec in fields.items() if spec.sample == "category"}
        records = [self.record_plan(i) for i in range(self.params.n)]
        responses: list[GenerationResponse] = []
        with self._responses() as self.responses:
            for name, spec in fields.items():
                if spec.generated:
                    responses += self._fill_field(name, spec, [r for r in records if r.rejected is None])
        data, rejects = self._record_tables(records)
        meta = self._meta(records, data, rejects, time.perf_counter() - started, responses)
        return StepResult(data=data, tables={"rejects": rejects}, meta=meta)

    def _fill_field(self, name: str, spec: RecordField, records: list[RowPlan]) -> list[GenerationResponse]:
        """Ask for field `name` of every record still standing, then clean or parse and validate each reply."""
        from synthforge.generation.fields import schema_text

        template = _template(spec.template, f"fields.{name}.template")
        system = _template(spec.system, f"fields.{name}.system") if spec.system else None
        schema = spec.reply_schema()
        schema_json = schema_text(schema) if schema is not None else None
        asks = []
        for record in records:
            ask = RowPlan(record.index, "topic", record.label, record.variables, record.seed)
            ask.request = self._request(template, record.values, record.seed, system, schema_json)
            asks.append(ask)
        self._fetch(asks, name)
        replies = [ask.response for ask in asks]
        values, reasons = self._field_values(spec, schema, replies)
        for record, reply, value, reason in zip(records, replies, values, reasons):
            reason = reply.rejected or reason
            if reason is None:
                record.values[name] = value
            else:
                record.rejected = (f"{name}: {reason}", reply.text)
        return replies

    def _field_values(self, spec: RecordField, schema, replies: list[GenerationResponse]) -> tuple[list, list]:
        """Each reply's value and why it is rejected (None when kept): parsed and validated, or cleaned text."""
        from synthforge.generation.fields import json_text, parse_structured

        if schema is None:
            cleaned = apply_hygiene([r.text for r in replies], spec.hygiene or self.params.hygiene,
                                    [row["text"] for row in self.few_shot])
            return cleaned.texts, cleaned.reasons
        parsed = [parse_structured(r.text, schema) for r in replies]
        seen: set[str] = set()
        values, reasons = [], []
        for value, reason in parsed:  # duplicates: the first occurrence stays, as for text fields
            if reason is None and self.params.hygiene.dedupe:
                canonical = json_text(value)
                reason = "duplicate" if canonical in seen else None
                seen.add(canonical)
            values.append(value)
            reasons.append(reason)
        return values, reasons

    def _record_tables(self, records: list[RowPlan]):
        import polars as pl

        from synthforge.generation.fields import column_type, json_text

        fields, text_field = self.params.fields, self.params.text_field()

        def shown(name: str, value: Any) -> Any:
            if value is None or not fields[name].generated or fields[name].reply_schema() is None:
                return value
            return json_text(value)

        kept, rejected = [], []
        for record in records:
            columns = {name: shown(name, record.values.get(name)) for name in fields}
            text = columns[text_field]
            row = {**self._row(record, "" if text is None else str(text)), **columns}
            if record.rejected is None:
                kept.append(row)
            else:
                rejected.append({**row, "reason": record.rejected[0], "raw": record.rejected[1]})
        schema = {**self._schema(), **{name: getattr(pl, column_type(spec)) for name, spec in fields.items()}}
        data = pl.DataFrame(kept, schema=schema, orient="row")
        rejects = pl.DataFrame(rejected, schema={**schema, "reason": pl.String, "raw": pl.String}, orient="row")
        return data, rejects

    def _responses(self):
        from synthforge.generation.responses import StepResponses

        params = self.params
        return StepResponses(self.ctx, params.backend, device=params.device, batch_size=params.batch_size,
                             concurrency=params.concurrency)

    def _paraphrase_seed_ids(self, paraphrase_indices: list[int]) -> list[int]:
        if not paraphrase_indices or self.params.paraphrase.source != "generated":
            return []
        groups = {paraphrase_ordinal(i, self.fraction) // self.params.paraphrase.per_seed for i in paraphrase_indices}
        return [topic_row_index(g, self.fraction) for g in sorted(groups)]

    def _seed_item(self, index: int, topic: dict[int, RowPlan]) -> dict[str, Any]:
        group = paraphrase_ordinal(index, self.fraction) // self.params.paraphrase.per_seed
        if self.params.paraphrase.source == "few_shot":
            if not self.few_shot:
                raise UserError("paraphrase.source few_shot needs a non-empty few_shot_from input", field="paraphrase.source")
            pick = row_rng(self.ctx.seed, "paraphrase-seed", group).randrange(len(self.few_shot))
            return {**self.few_shot[pick], "variables": {}}
        seed_plan = topic[topic_row_index(group, self.fraction)]
        return {"id": self._row_id(seed_plan.index), "label": seed_plan.label, "variables": seed_plan.variables,
                "text": clean(seed_plan.response.text, self.params.hygiene).text}

    def _fetch(self, plans: list[RowPlan], phase: str) -> None:
        """Fill in every plan's response (generation/responses.py: cache, claims, shards, progress)."""
        for plan, response in zip(plans, self.responses.fetch([p.request for p in plans], phase)):
            plan.response = response

    # output
    def _row_id(self, index: int) -> str:
        return f"{self.ctx.step}-{index}"

    def _row(self, plan: RowPlan, text: str) -> dict[str, Any]:
        params = self.params  # every request of the step samples with these settings
        return {
            "id": self._row_id(plan.index),
            "text": text,
            "label": plan.label,
            "source": "synthetic",
            **{name: plan.variables.get(name) for name in self.values},
            "mode": plan.mode,
            "paraphrase_of": plan.paraphrase_of,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_new_tokens": params.max_new_tokens,
            "row_seed": plan.seed,
            "model": self.responses.identity().get("model"),
        }

    def _tables(self, plans: list[RowPlan]):
        import polars as pl

        sources = [row["text"] for row in self.few_shot]
        cleaned = apply_hygiene([p.response.text for p in plans], self.params.hygiene, sources)
        kept, rejected = [], []
        for plan, text, hygiene_reason in zip(plans, cleaned.texts, cleaned.reasons):
            row = self._row(plan, text)
            reason = plan.response.rejected or hygiene_reason
            if reason is None:
                kept.append(row)
            else:
                rejected.append({**row, "reason": reason, "raw": plan.response.text})
        schema = self._schema()
        data = pl.DataFrame(kept, schema=schema, orient="row")
        rejects = pl.DataFrame(rejected, schema={**schema, "reason": pl.String, "raw": pl.String}, orient="row")
        return data, rejects

    def _schema(self) -> dict[str, Any]:
        import polars as pl

        return {
            "id": pl.String, "text": pl.String, "label": pl.String, "source": pl.String,
            **{name: pl.String for name in self.values},
            "mode": pl.String, "paraphrase_of": pl.String, "temperature": pl.Float64, "top_p": pl.Float64,
            "max_new_tokens": pl.Int64, "row_seed": pl.Int64, "model": pl.String,
        }

    def _meta(self, plans: list[RowPlan], data, rejects, seconds: float,
              responses: list[GenerationResponse] | None = None) -> dict[str, Any]:
        responses = [p.response for p in plans] if responses is None else responses
        return {
            "rows_requested": self.params.n,
            "rows": data.height,
            "rejected": rejects.height,
            "reject_reasons": dict(Counter(rejects["reason"].to_list())),
            "modes": dict(Counter(p.mode for p in plans)),
            "backend": {"type": self.responses.backend.type, **self.responses.identity()},
            "prompt_tokens": sum(r.prompt_tokens for r in responses),
            "completion_tokens": sum(r.completion_tokens for r in responses),
            **self.responses.counters(),
            "seconds": round(seconds, 3),
        }


# -- helpers --------------------------------------------------------------------
def _prompt_tokens(params: GenerateParams) -> int:
    """A rough prompt size (of all a row's requests): ~4 characters a token, ~40 characters a variable, few-shot
    examples and earlier fields as long as replies."""
    calls = _llm_fields(params)
    messages = [(params.template, params.system)] if params.fields is None else [
        (spec.template, spec.system or params.system) for spec in params.fields.values() if spec.generated]
    prompt_chars = sum(len(user) + len(system or "") for user, system in messages) + calls * 40 * len(params.variables)
    earlier_fields = calls * (calls - 1) // 2
    return prompt_chars // 4 + (calls * params.few_shot_k + earlier_fields) * params.max_new_tokens


def _llm_fields(params: GenerateParams) -> int:
    """LLM requests per row: one, or one per generated field."""
    return 1 if params.fields is None else sum(spec.generated for spec in params.fields.values())


def _template(source: str, field: str):
    from synthforge.generation.prompts import PromptTemplate

    return PromptTemplate(source, field)


def _label_descriptions(labels: list[str] | dict[str, str]) -> dict[str, str]:
    if isinstance(labels, dict):
        return {str(k): str(v) for k, v in labels.items()}
    if len(set(labels)) != len(labels):
        raise UserError("labels are repeated", field="labels")
    return {str(label): "" for label in labels}


def _values(name: str, spec: list[str] | ValuesFile, num_topics: int | None) -> list[str]:
    """The values a variable draws from: its list (or file lines), cut to the first `num_topics`."""
    if isinstance(spec, ValuesFile):
        values = values_file(Path(spec.file), f"variables.{name}.file")
    else:
        values = [str(v) for v in spec]
    if not values:
        raise UserError("no values to draw from", field=f"variables.{name}")
    return values[:num_topics] if num_topics else values


def _few_shot_rows(source) -> list[dict[str, str]]:
    if source is None:
        return []
    import polars as pl

    try:
        frame = source.frame(columns=["id", "text", "label"])
    except pl.exceptions.ColumnNotFoundError as exc:
        raise UserError(f"few-shot rows need id, text and label columns: {exc}", field="few_shot_from") from None
    return [{"id": str(r["id"]), "text": str(r["text"]), "label": str(r["label"])} for r in frame.iter_rows(named=True)]
