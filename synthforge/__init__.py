"""synthforge: declarative, cached datasets from real and LLM-generated data."""

__version__ = "0.1.0"
