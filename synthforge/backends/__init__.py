"""Model backends: LLM generation (a registry of types: transformers, OpenAI-compatible HTTP, plugins) and embeddings."""
