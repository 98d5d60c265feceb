"""Model backends: LLM generation (transformers, OpenAI-compatible HTTP)."""
