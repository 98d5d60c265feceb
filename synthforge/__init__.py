"""synthforge: declarative, cached datasets from real and LLM-generated data.

    import synthforge as sf
    r = sf.open("recipes/demo.yaml")   # see docs/python.md
"""

from synthforge.version import __version__  # noqa: F401 (the package's version, re-exported)

_API = ("open", "OpenRecipe", "read_table")


def __getattr__(name: str):
    # The API is imported on first use, so `synthforge --help` stays fast.
    if name in _API:
        from synthforge import api

        return getattr(api, name)
    raise AttributeError(f"module 'synthforge' has no attribute {name!r}")
