"""A judge's rubric: its scale, the JSON reply it asks for, how a reply is parsed and validated, and the
distribution of the scores it gave.

Two scales: an integer `score` from `min` to `max`, or pass/fail per named criterion (the score is then the
share of criteria passed). Either may ask for a `rationale`, which the reply gives first (a model writes its
reasons before its verdict). The reply's JSON Schema is sent as structured output where the backend has it,
and every reply is parsed and validated against it whatever the backend.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from synthforge.errors import UserError
from synthforge.stepapi import StepParams

CRITERION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Scale(StepParams):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"min": 1, "max": 5}, {"criteria": {"fits_label": "the text expresses its label"}}]})

    min: int | None = Field(None, description="the lowest integer score (default 1; not with criteria)")
    max: int | None = Field(None, description="the highest integer score (default 5; not with criteria)")
    criteria: dict[str, str] | None = Field(
        None, description="pass or fail per named criterion instead of an integer score: criterion name -> what "
        "passing it means (shown to the judge); each becomes a boolean column <column>_<name>, and the score is the "
        "share passed"
    )
    rationale: bool = Field(True, description="ask for a short rationale before the verdict (kept in <column>_rationale)")

    @model_validator(mode="after")
    def _consistent(self) -> "Scale":
        if self.type == "integer":
            low, high = self.bounds()
            if low >= high:
                raise UserError(f"min {low} is not below max {high}", field="scale.min", hint="e.g. min: 1, max: 5")
            if high - low > 100:
                raise UserError(f"a scale of {high - low + 1} points is too fine to judge", field="scale.max",
                                hint="use at most 101 points, e.g. 1 to 5 or 0 to 10")
            return self
        for option in ("min", "max"):
            if getattr(self, option) is not None:
                raise UserError(f"{option} applies to an integer scale, not to criteria", field=f"scale.{option}",
                                hint="a scale with criteria scores the share passed: remove min and max")
        if not self.criteria:
            raise UserError("criteria need at least one criterion", field="scale.criteria",
                            hint="e.g. criteria: {fits_label: the text expresses its label}")
        for name, meaning in self.criteria.items():
            if not CRITERION_NAME.fullmatch(name) or name == "rationale":
                raise UserError(f"criterion name '{name}' is not usable as a column", field=f"scale.criteria.{name}",
                                hint="letters, digits and _, not starting with a digit, and not 'rationale'")
            if not str(meaning).strip():
                raise UserError("a criterion needs a description the judge can apply", field=f"scale.criteria.{name}")
        return self

    @property
    def type(self) -> str:
        """`integer` (a score from min to max) or `pass_fail` (criteria given)."""
        return "integer" if self.criteria is None else "pass_fail"

    def bounds(self) -> tuple[int, int]:
        return (1 if self.min is None else self.min), (5 if self.max is None else self.max)

    def describe(self) -> str:
        if self.type == "integer":
            return "integer {} to {}".format(*self.bounds())
        return f"pass/fail on {len(self.criteria)} criteria"


# -- the reply asked for ------------------------------------------------------------------------------
def reply_schema(scale: Scale) -> dict[str, Any]:
    """The JSON Schema of a reply: rationale (if asked) first, then the score or one boolean per criterion."""
    properties: dict[str, Any] = {"rationale": {"type": "string"}} if scale.rationale else {}
    if scale.type == "integer":
        low, high = scale.bounds()
        properties["score"] = {"type": "integer", "minimum": low, "maximum": high}
    else:
        properties.update({name: {"type": "boolean"} for name in scale.criteria})
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def reply_instruction(scale: Scale) -> str:
    """What the prompt ends with: the verdict asked for and the JSON form of the reply."""
    parts = ['"rationale": "<one or two sentences>"'] if scale.rationale else []
    if scale.type == "integer":
        low, high = scale.bounds()
        parts.append(f'"score": <an integer from {low} to {high}>')
        lines = []
    else:
        parts += [f'"{name}": <true or false>' for name in scale.criteria]
        lines = ["Judge each criterion (true if it holds):", *(f"- {name}: {meaning}" for name, meaning in scale.criteria.items())]
    return "\n".join([*lines, "Reply with JSON only, in this form: {" + ", ".join(parts) + "}"])


# -- the reply received -------------------------------------------------------------------------------
def parse_reply(text: str, schema: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(the verdict, None), or (None, why the reply is refused). A JSON object inside surrounding prose (a
    model without structured output often adds some) is taken when the whole reply is not JSON."""
    from synthforge.generation.fields import parse_structured

    value, reason = parse_structured(text, schema)
    if reason is not None and reason.startswith("not JSON"):
        inner = _embedded_object(text)
        if inner is not None:
            value, reason = parse_structured(inner, schema)
    return (value, None) if reason is None else (None, reason)


def _embedded_object(text: str) -> str | None:
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if 0 <= start < end else None


def score_of(scale: Scale, verdict: dict[str, Any]) -> float | int:
    """The row's score: the integer given, or the share of criteria passed."""
    if scale.type == "integer":
        return int(verdict["score"])
    return sum(bool(verdict[name]) for name in scale.criteria) / len(scale.criteria)


# -- the distribution -----------------------------------------------------------------------------------
def score_distribution(scale: Scale, scores: list[float], passes: dict[str, list[bool]]) -> dict[str, Any]:
    """Counts (integer scale) or pass rates (pass_fail), with the mean and standard deviation of the scores."""
    n = len(scores)
    mean = sum(scores) / n if n else None
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1)) if n > 1 else None
    found: dict[str, Any] = {"scale": scale.describe(), "rows": n, "mean": _rounded(mean), "sd": _rounded(sd)}
    if scale.type == "integer":
        low, high = scale.bounds()
        counted = Counter(int(s) for s in scores)
        found["counts"] = {str(value): counted.get(value, 0) for value in range(low, high + 1)}
    else:
        found["pass_rate"] = {name: _rounded(sum(marks) / n if n else None) for name, marks in passes.items()}
        found["all_pass"] = _rounded(sum(s == 1 for s in scores) / n if n else None)
    return found


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def distribution_rows(scores: dict[str, Any]) -> list[tuple[str, str, str]]:
    """A score distribution (`score_distribution`) as (name, value, meaning) rows for a terminal table."""
    rows = [("judge score: mean", _shown(scores.get("mean")), f"{scores.get('scale')}, over {scores.get('rows')} rows"),
            ("judge score: sd", _shown(scores.get("sd")), "standard deviation of the scores")]
    for value, count in (scores.get("counts") or {}).items():
        rows.append((f"judge score = {value}", str(count), "rows given this score"))
    for name, rate in (scores.get("pass_rate") or {}).items():
        rows.append((f"judge pass: {name}", _shown(rate), "share of rows passing this criterion"))
    if "all_pass" in scores:
        rows.append(("judge pass: all", _shown(scores["all_pass"]), "share of rows passing every criterion"))
    return rows


def _shown(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

