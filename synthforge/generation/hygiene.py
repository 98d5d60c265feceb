"""Output hygiene: clean raw LLM text, and say why a row is rejected (never drop silently)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

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
    strip_boilerplate: bool = Field(
        True, description="true to strip chat preambles (\"Sure! Here is...\") and prefixes such as \"Review:\""
    )
    strip_quotes: bool = Field(True, description="true to strip one pair of quotes around the whole text")
    extract_regex: str | None = Field(
        None, description="a regex: keep group 1 (or the whole match) of its first match; a text without one is rejected"
    )
    json_field: str | None = Field(
        None, description="a field name: parse the text (or its first {...}) as JSON and keep that field, else reject"
    )
    min_chars: int = Field(
        default=1, ge=0, description="the fewest characters a cleaned text may have (shorter ones are rejected)"
    )
    max_chars: int | None = Field(
        default=None, ge=1, description="the most characters a cleaned text may have (longer ones are rejected; default: no limit)"
    )
    dedupe: bool = Field(True, description="true to reject exact duplicates after cleaning (the first occurrence stays)")
    max_copied_share: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="a share in (0, 1]: reject a text when at least this share of its word 4-grams occurs in a "
        "few-shot (few_shot_from) text, e.g. 0.5 (default: no copy check)",
    )


@dataclass(frozen=True)
class Cleaned:
    text: str
    reason: str | None  # None: accepted


class CleanedColumn(NamedTuple):
    """The cleaned texts and, row for row, why each is rejected (None: accepted)."""

    texts: list[str]
    reasons: list[str | None]


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


def apply_hygiene(raws: list[str], config: HygieneConfig, sources: list[str] = ()) -> CleanedColumn:
    """Clean every text; copies of a source text and later exact duplicates of an accepted text are rejected.

    With the default options the whole column goes through polars at once (`hygiene_frame`), giving
    exactly the texts and reasons of `clean` row by row. `json_field`, `extract_regex` and
    `max_copied_share` keep the per-row Python path: a user's pattern is Python regex syntax (Rust's regex
    differs), JSON numbers are formatted by Python's `str`, and the n-gram copy check has no column form.
    So do texts polars cannot hold (lone surrogates from a JSON escape).
    """
    if _needs_per_row(config):
        return _apply_per_row(raws, config, sources)
    try:
        column = _as_column(raws)
    except UnicodeEncodeError:
        return _apply_per_row(raws, config, sources)
    frame = hygiene_frame(column, config)
    return CleanedColumn(frame["text"].to_list(), frame["reason"].to_list())


def _needs_per_row(config: HygieneConfig) -> bool:
    return bool(config.json_field or config.extract_regex or config.max_copied_share is not None)


def _apply_per_row(raws: list[str], config: HygieneConfig, sources: list[str]) -> CleanedColumn:
    from synthforge.fidelity import copied_ngram_share, source_ngrams

    source_grams = source_ngrams(list(sources)) if config.max_copied_share is not None else set()
    seen: set[str] = set()
    results = CleanedColumn([], [])
    for raw in raws:
        cleaned = clean(raw, config)
        text, reason = cleaned.text, cleaned.reason
        if reason is None and source_grams and copied_ngram_share(text, source_grams) >= config.max_copied_share:
            reason = COPY_REASON
        if reason is None and config.dedupe:
            if text in seen:
                reason = "duplicate"
            else:
                seen.add(text)
        results.texts.append(text)
        results.reasons.append(reason)
    return results


def _as_column(raws: list[str]):
    import polars as pl

    return pl.Series("raw", raws, dtype=pl.String)


# -- the column form -------------------------------------------------------------------------------
# Rust's regex differs from Python's re in the details these rules rest on: `\s` (Python's whitespace
# includes U+001C..U+001F), `\w`/`\b` (Python: isalnum or "_"; Rust adds marks and connector
# punctuation), and IGNORECASE ("i" matches "İ" and "ı" in Python only). So the column patterns spell
# out Python's own character sets, read from Python's re over every code point.
@cache
def _code_point_runs() -> tuple[tuple[int, str], ...]:
    """Every code point in order, as (first code, text) runs around the surrogates, which no str of polars holds."""
    from array import array

    return tuple((low, array("I", range(low, high)).tobytes().decode("utf-32-le"))
                 for low, high in ((0, 0xD800), (0xE000, 0x110000)))


def _rust_class(python_class: str, flags: int = 0, negate: bool = False) -> str:
    """A Rust regex character class of exactly the code points that Python's re matches with `python_class`."""
    ranges = []
    for first_code, text in _code_point_runs():
        for run in re.finditer(f"(?:{python_class})+", text, flags):
            ranges.append(f"\\x{{{first_code + run.start():X}}}-\\x{{{first_code + run.end() - 1:X}}}")
    return "[" + ("^" if negate else "") + "".join(ranges) + "]"


@cache
def _python_whitespace() -> str:
    return "".join(char for _, text in _code_point_runs() for char in re.findall(r"\s", text))


@cache
def _letter_variants() -> str:
    """Every code point that Python's re.IGNORECASE matches to some ASCII letter."""
    return "".join(char for _, text in _code_point_runs() for char in re.findall("[a-z]", text, re.IGNORECASE))


def _ignorecase(word: str) -> str:
    """`word` as Rust regex matching what Python's re.IGNORECASE matches, letter by letter."""
    pieces = []
    for char in word:
        matches = {c for c in _letter_variants() + char if re.fullmatch(re.escape(char), c, re.IGNORECASE)}
        pieces.append("[" + "".join(f"\\x{{{ord(c):X}}}" for c in sorted(matches)) + "]")
    return "".join(pieces)


@cache
def _column_patterns() -> tuple[str, str, str]:
    """Rust forms of `_PREAMBLE` and `_LABEL_PREFIX`, and what `" ".join(text.split())` turns into one space
    inside a stripped text: a run of Python whitespace other than a lone " " (which needs no work)."""
    space = _rust_class(r"\s")
    not_word = _rust_class(r"[\w\n:]", negate=True)

    def words(*options: str) -> str:
        return "(?:" + "|".join(_ignorecase(option) for option in options) + ")"

    interjection = words("sure", "certainly", "of course", "absolutely", "okay") + "[!,.]+"
    # `\b[^\n:]*(?::|$)` after a word character, without `\b`: the end, a colon, or a non-word character
    here = (_ignorecase("here") + words("'s", "\u2019s", " is", " are", " it is", " you go")
            + f"(?:$|:|{not_word}[^\n:]*(?::|$))")
    preamble = rf"(?m)\A{space}*(?:{interjection}[ \t]*(?:{here})?|{here}){space}*"
    label = (rf"^{space}*(?:\*\*|__)?" + words("review", "text", "answer", "output", "response", "paraphrase",
                                                 "sentence", "example")
             + rf"{space}*(?:\*\*)?{space}*:{space}*(?:\*\*|__)?{space}*")
    return preamble, label, f"{space}{{2,}}|" + _rust_class(r"[^\S ]")


def hygiene_frame(raws, config: HygieneConfig):
    """`text` and `reason` (null: accepted) for a polars String Series of raw texts, with the default
    options (no json_field, extract_regex or max_copied_share): `clean` and dedupe as column operations."""
    import polars as pl

    if _needs_per_row(config):
        raise ValueError("hygiene_frame covers the default options only; use apply_hygiene")
    strip = _python_whitespace()
    text = raws.str.strip_chars(strip)  # every step below starts from a stripped text and leaves one
    if config.strip_boilerplate:
        text = _strip_boilerplate_column(text).str.strip_chars(strip)
    if config.strip_quotes:
        text = _strip_quotes_column(text, strip)
    one_line = text.str.contains("\n", literal=True).not_()  # texts with a newline keep their spacing
    collapsed = text.filter(one_line).str.replace_all(_column_patterns()[2], " ")
    text = text.clone().scatter(one_line.arg_true(), collapsed)  # scatter writes in place
    frame = pl.DataFrame({"text": text}).with_columns(reason=_length_reason(pl.col("text"), config))
    if config.dedupe:
        first = pl.col("text").is_first_distinct().over(pl.col("reason").is_null())
        frame = frame.with_columns(reason=pl.when(pl.col("reason").is_null() & ~first).then(pl.lit("duplicate"))
                                   .otherwise(pl.col("reason")))
    return frame


def _strip_boilerplate_column(text):
    """`strip_boilerplate` without its final strip: both substitutions again on the rows they changed,
    until none changes (preambles and prefixes stack)."""
    preamble, label, _ = _column_patterns()
    rows, before, text = None, text, text.clone()  # scatter writes in place
    while len(before):
        after = before.str.replace(preamble, "", n=1).str.replace(label, "", n=1)
        changed = after != before
        rows = changed.arg_true() if rows is None else rows.filter(changed)
        before = after.filter(changed)
        text = text.scatter(rows, before)
    return text


def _strip_quotes_column(text, strip: str):
    """`strip_quotes` on stripped texts. The openings differ, so a text's first character names the one
    pair that can fit it: each group is checked with its own literal needle."""
    import polars as pl

    closing_of, whole = dict(_QUOTES), pl.col("text")
    inner = whole.str.slice(1).str.head(-1)
    candidates = (pl.DataFrame({"text": text}).with_row_index("row")
                  .with_columns(opening=whole.str.head(1))
                  .filter(whole.str.len_chars() >= 2, pl.col("opening").is_in(list(closing_of))))
    groups = candidates.partition_by("opening", as_dict=True, include_key=False)
    fits = pl.concat([group.filter(whole.str.ends_with(closing_of[opening]), ~inner.str.contains(opening, literal=True))
                      for (opening,), group in groups.items()] or [candidates.drop("opening")])
    return text.clone().scatter(fits["row"], fits.select(inner.str.strip_chars(strip)).to_series())


def _length_reason(text, config: HygieneConfig):
    import polars as pl

    length = text.str.len_chars()
    reason = pl.when(length < config.min_chars).then(
        pl.when(length == 0).then(pl.lit("empty")).otherwise(pl.lit(f"shorter than {config.min_chars} chars")))
    if config.max_chars is not None:
        reason = reason.when(length > config.max_chars).then(pl.lit(f"longer than {config.max_chars} chars"))
    return reason.otherwise(pl.lit(None, dtype=pl.String))
