"""Decoding under a JSON Schema on a local model (xgrammar): every reply a row finishes is valid JSON for it.

`SchemaMask` is a logits processor for `model.generate`: before the sampler draws a row's next token, every
token the schema cannot continue with is set to -inf, so the seeded sampler (`transformers_llm.SeededSampler`)
draws among the allowed ones only. Rows without a schema in the same batch are left as they are. The grammar
ends a row only on the model's own end tokens, the ones `generate` stops on. A reply cut by max_new_tokens is
still unfinished JSON: the step's validation rejects it, as it rejects any invalid reply.

xgrammar was picked over outlines and lm-format-enforcer: its masks come from a compiled grammar in C++ (no
Python per vocabulary token), it fills one row of a batch's mask at a time (batched `generate` works as it is),
its wheel installs from PyPI on CPU beside the pinned torch, and vLLM, SGLang and TensorRT-LLM decode with it.
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Any

from synthforge.errors import UserError

DECODER_PACKAGE = "xgrammar"
INSTALL_HINT = "pip install 'synthforge[constrained]' (or xgrammar), or use an openai backend (vLLM, llama.cpp's server)"

_COMPILERS: dict[int, tuple[Any, Any]] = {}  # id(tokenizer) -> (tokenizer, GrammarCompiler): one per loaded model


def decoder_identity() -> dict[str, str]:
    """The library that decodes under a schema and its version: enters keys only where a schema is used.

    Read from the installed package's metadata (no import: planning a cached build loads no torch)."""
    try:
        version = _installed_version(DECODER_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"structured output on the transformers backend needs the {DECODER_PACKAGE} package, "
                        "which is not installed", field="backend", hint=INSTALL_HINT) from None
    return {"decoder": f"{DECODER_PACKAGE} {version}"}


@functools.lru_cache(maxsize=None)
def _installed_version(package: str) -> str:
    """Once per process: response keys ask for it per request (a missing package raises, and is not remembered)."""
    return importlib.metadata.version(package)


def schema_masks(tokenizer, model, schemas: list[str | None], eos_ids: list[int]) -> "SchemaMask | None":
    """The logits processor constraining each row to its schema (canonical JSON text), or None if no row has one."""
    if all(schema is None for schema in schemas):
        return None
    decoder_identity()  # a clear error, not an ImportError, when the library is missing
    compiler = _compiler(tokenizer, model, eos_ids)
    grammars = {schema: _compile(compiler, schema) for schema in set(schemas) if schema is not None}
    return SchemaMask([grammars.get(schema) if schema is not None else None for schema in schemas],
                      model.config.vocab_size)


def _compiler(tokenizer, model, eos_ids: list[int]):
    import xgrammar

    cached = _COMPILERS.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=model.config.vocab_size,
                                                       stop_token_ids=list(eos_ids))
        cached = _COMPILERS[id(tokenizer)] = (tokenizer, xgrammar.GrammarCompiler(info, max_threads=1))
    return cached[1]


def _compile(compiler, schema: str):
    """Compact JSON (no free whitespace: a small model left free to emit it can loop on blanks until cut off)."""
    try:
        return compiler.compile_json_schema(schema, any_whitespace=False, strict_mode=True)
    except (RuntimeError, ValueError) as exc:
        message = " ".join(str(exc).split())[:200]
        raise UserError(f"{DECODER_PACKAGE} cannot decode under this JSON Schema: {message}", field="backend",
                        hint="simplify the schema, or use an openai backend whose server supports it") from None


class SchemaMask:
    """Logits processor: sets every token the row's schema forbids to -inf (rows without one untouched)."""

    def __init__(self, grammars: list[Any], vocab_size: int):
        import xgrammar

        self.matchers = [xgrammar.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.bitmask = xgrammar.allocate_token_bitmask(len(grammars), vocab_size)
        self.started = False

    def __call__(self, input_ids, scores):
        import xgrammar

        if self.started:  # the token drawn last step, per row still under its grammar
            for row, matcher in enumerate(self.matchers):
                if matcher is not None and not matcher.is_terminated():
                    matcher.accept_token(int(input_ids[row, -1]))
        self.started = True
        rows = [row for row, matcher in enumerate(self.matchers) if matcher is not None and not matcher.is_terminated()]
        for row in rows:
            self.matchers[row].fill_next_token_bitmask(self.bitmask, row)
        if rows:  # finished rows only receive padding from here on: their scores do not matter
            device = scores.device
            masked = scores if device.type in ("cpu", "cuda") else scores.cpu()
            xgrammar.apply_token_bitmask_inplace(masked, self.bitmask.to(masked.device), indices=rows)
            scores = masked.to(device)
        return scores
