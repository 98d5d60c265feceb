"""The package's version (also in pyproject.toml), below every module that records it."""

__version__ = "0.1.0"
