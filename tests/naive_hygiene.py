"""The per-row hygiene of the default options, as `apply_hygiene` ran it before its column form: a Python
loop over `clean`. The column form must match it text for text and reason for reason; it is also the
benchmark baseline."""

from __future__ import annotations

from synthforge.generation.hygiene import HygieneConfig, clean


def apply_hygiene_naive(raws: list[str], config: HygieneConfig) -> list[tuple[str, str | None]]:
    """(text, reason) per raw text; a later exact duplicate of an accepted text is rejected."""
    seen: set[str] = set()
    results = []
    for raw in raws:
        cleaned = clean(raw, config)
        reason = cleaned.reason
        if reason is None and config.dedupe:
            if cleaned.text in seen:
                reason = "duplicate"
            else:
                seen.add(cleaned.text)
        results.append((cleaned.text, reason))
    return results
