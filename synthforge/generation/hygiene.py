"""Output hygiene: clean raw LLM text, and say why a row is rejected (never drop silently)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pydantic import Field

from synthforge.stepapi import StepParams

# "Sure! Here is a positive review:" / "Certainly, here's the text:" / a lone "Sure!" line. Interjections
# must carry punctuation, so a review opening "Okay food, great view" keeps its first word.
_INTERJECTION = r"(?:sure|certainly|of course|absolutely|okay)[!,.]+"
_HERE = r"here(?:'s|\u2019s| is| are| it is| you go)\b[^\n:]*(?::|$)"
_PREAMBLE = re.compile(rf"\A\s*(?:{_INTERJECTION}[ \t]*(?:{_HERE})?|{_HERE})\s*", re.IGNORECASE | re.MULTILINE)
_LABEL_PREFIX = re.compile(
    r"^\s*(?:\*\*|__)?(?:review|text|answer|output|response|paraphrase|sentence|example)\s*(?:\*\*)?\s*:\s*(?:\*\*|__)?\s*",
    re.IGNORECASE,
)
_QUOTES = [('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("`", "`")]


class HygieneConfig(StepParams):
    strip_boilerplate: bool = True  # "Sure! Here is...", "Review:" prefixes
    strip_quotes: bool = True  # surrounding quote pairs
    extract_regex: str | None = None  # keep group 1 (or the whole match) of the first match
    json_field: str | None = None  # parse the text as JSON (or its first {...}) and keep this field
    min_chars: int = Field(default=1, ge=0)
    max_chars: int | None = Field(default=None, ge=1)
    dedupe: bool = True  # drop exact duplicates after cleaning (the first occurrence stays)
    max_copied_share: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="reject a text when at least this share of its word 4-grams occurs in a few-shot "
        "(few_shot_from) text, e.g. 0.5; default: no copy check",
    )


@dataclass(frozen=True)
class Cleaned:
    text: str
    reason: str | None  # None: accepted


def strip_boilerplate(text: str) -> str:
    previous = None
    while previous != text:  # preambles and prefixes can stack: "Sure! Here it is:\nReview: ..."
        previous = text
        text = _PREAMBLE.sub("", text, count=1)
        text = _LABEL_PREFIX.sub("", text, count=1)
    return text.strip()


def strip_quotes(text: str) -> str:
    text = text.strip()
    for opening, closing in _QUOTES:
        if len(text) >= 2 and text.startswith(opening) and text.endswith(closing) and opening not in text[1:-1]:
            return text[1:-1].strip()
    return text


def extract_json_field(text: str, field: str) -> str | None:
    candidates = [text]
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match:
        candidates.append(match.group(0))
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get(field), (str, int, float)):
            return str(value[field])
    return None


def extract_regex(text: str, pattern: str) -> str | None:
    match = re.search(pattern, text, re.DOTALL)
    if not match:
        return None
    return match.group(1) if match.groups() else match.group(0)


def clean(raw: str, config: HygieneConfig) -> Cleaned:
    """The cleaned text and, when it must be rejected, why."""
    text = raw.strip()
    if config.json_field:
        extracted = extract_json_field(text, config.json_field)
        if extracted is None:
            return Cleaned(text, f"no JSON field '{config.json_field}'")
        text = extracted.strip()
    if config.extract_regex:
        extracted = extract_regex(text, config.extract_regex)
        if extracted is None:
            return Cleaned(text, "regex did not match")
        text = extracted.strip()
    if config.strip_boilerplate:
        text = strip_boilerplate(text)
    if config.strip_quotes:
        text = strip_quotes(text)
    text = " ".join(text.split()) if "\n" not in text else text.strip()
    if len(text) < config.min_chars:
        return Cleaned(text, "empty" if not text else f"shorter than {config.min_chars} chars")
    if config.max_chars is not None and len(text) > config.max_chars:
        return Cleaned(text, f"longer than {config.max_chars} chars")
    return Cleaned(text, None)


COPY_REASON = "copies a few-shot text"


def apply_hygiene(raws: list[str], config: HygieneConfig, sources: list[str] = ()) -> list[Cleaned]:
    """Clean every text; copies of a source text and later exact duplicates of an accepted text are rejected."""
    from synthforge.fidelity import copied_ngram_share, source_ngrams

    source_grams = source_ngrams(list(sources)) if config.max_copied_share is not None else set()
    seen: set[str] = set()
    results = []
    for raw in raws:
        cleaned = clean(raw, config)
        if cleaned.reason is None and source_grams and copied_ngram_share(cleaned.text, source_grams) >= config.max_copied_share:
            cleaned = Cleaned(cleaned.text, COPY_REASON)
        if cleaned.reason is None and config.dedupe:
            if cleaned.text in seen:
                cleaned = Cleaned(cleaned.text, "duplicate")
            else:
                seen.add(cleaned.text)
        results.append(cleaned)
    return results
