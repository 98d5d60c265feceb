"""The types a step's API is made of, below every layer that uses them.

Step kinds (`synthforge.steps`), backends, generation helpers, the recipe resolver, the builder,
executors and commands all speak in these: a step's parameters (`StepParams` and the field types
`Ref`, `FilePath`, `Labels`), the runtime settings that never enter a key (`Runtime`), and a run's
inputs, context and result (`InputTable`, `StepContext`, `StepResult`, `Estimate`). They live here,
not in `steps/base.py`, so that lower layers need not import the steps package. Plugin authors
import them, with `Step`, from `synthforge.steps.base`, which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from synthforge.cache import Cache, Manifest


class _RefMarker:
    """Metadata marking a str field as a reference to another step's output."""

    def __repr__(self) -> str:
        return "Ref"


class _FileMarker:
    """Metadata marking a str field as a file path, relative to the recipe's folder.

    The builder checks the file exists, hashes its content into the key (so an
    edited file rebuilds the step) and hands the step an absolute path.
    """

    def __repr__(self) -> str:
        return "FilePath"


def _labels_as_strings(value: Any) -> Any:
    """Labels are strings: YAML's `{5: positive}` or `[1, 2]` (star ratings) mean "5", "1", "2"."""
    def text(item: Any) -> Any:
        if isinstance(item, bool):
            raise ValueError(f"YAML reads an unquoted yes/no/true/false/on/off as {item}: quote the label, e.g. 'yes'")
        return str(item) if isinstance(item, (int, float)) else item

    if isinstance(value, dict):
        return {text(k): text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [text(v) for v in value]
    return value


# A list of labels, or a mapping from a label to a description or new name; numbers become strings.
Labels = Annotated[list[str] | dict[str, str], BeforeValidator(_labels_as_strings)]

# Every seed a recipe gives is 0 <= seed < 2^31: faiss's k-means takes a C int, the narrowest of the seeds'
# consumers (numpy wants >= 0, torch < 2^64), and replicate seeds are drawn in the same range.
SEED_LIMIT = 2**31


def checked_seed(value: int) -> int:
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"a seed is an integer from 0 to {SEED_LIMIT - 1}")
    return value


Seed = Annotated[int, AfterValidator(checked_seed)]

REF = _RefMarker()
Ref = Annotated[str, REF]
FILE = _FileMarker()
FilePath = Annotated[str, FILE]


class StepParams(BaseModel):
    """Base for every step's parameters: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Runtime:
    """Settings that change how, not what, a step computes. Never in a key."""

    device: str = "auto"
    progress: bool = True
    concurrency: int | None = None
    batch_size: int | None = None
    max_requests: int | None = None  # budget overrides; None: the recipe's budget
    max_tokens: int | None = None
    shard_rows: int | None = None  # rows per shard of row-parallel steps (generate, embed); None: their default
    ray: bool = False  # run shards of row-parallel steps on a Ray actor pool (set by the Ray executor)
    llm_budget: Any = None  # the build's shared request count (backends.llm.RequestBudget), set by the builder

    def resolve(self, name: str, *recipe_values: Any, default: Any = None) -> Any:
        """The one rule for a runtime setting (docs/recipes.md, "Runtime settings"): the command line
        (or the Python API's argument) when given, else the first recipe field given (most specific
        first: a step's own field before its backend's), else `default`. None and "auto" mean not given."""
        for value in (getattr(self, name), *recipe_values):
            if value is not None and value != "auto":
                return value
        return default


class InputTable:
    """A cached output handed to a downstream step (read lazily, checked on every read)."""

    def __init__(self, entry_dir: Path, table: str = "data"):
        self.entry_dir = Path(entry_dir)
        self.table = table

    @cached_property
    def manifest(self) -> "Manifest":
        from synthforge.cache import read_manifest

        return read_manifest(self.entry_dir)

    @property
    def key(self) -> str:
        return self.manifest.key

    @property
    def step(self) -> str:
        return self.manifest.step

    def frame(self, columns: list[str] | None = None) -> "pl.DataFrame":
        """The table, after its bytes matched the manifest's content hash (DamagedEntry otherwise)."""
        from synthforge.cache import read_table

        return read_table(self.entry_dir, self.table, columns)

    def scan(self) -> "pl.LazyFrame":
        """The table as a lazy scan, checked like `frame`: a head or a column reads only that."""
        from synthforge.cache import scan_table

        return scan_table(self.entry_dir, self.table)

    def artifact(self, relative: str) -> Path:
        """An artifact of this input's entry (`artifacts/model`: a file or a folder), after a full hash check of
        every file in it (DamagedEntry otherwise): how a step reads another step's artifact."""
        from synthforge.cache import artifact_path

        return artifact_path(self.entry_dir, relative)

    def __repr__(self) -> str:
        return f"InputTable({self.entry_dir.name}:{self.table})"


@dataclass
class StepContext:
    step: str  # the step's name in the recipe
    recipe: str  # the recipe's name
    params: StepParams
    seed: int
    key: str
    inputs: dict[str, Any]  # Ref field name -> InputTable | list[InputTable] | dict[str, InputTable] | None
    workdir: Path  # the entry being written; put extra files under workdir / "artifacts"
    cache: "Cache"
    runtime: Runtime = field(default_factory=Runtime)
    log: Callable[[str], None] = print

    @property
    def artifacts(self) -> Path:
        path = self.workdir / "artifacts"
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Estimate:
    """What a step will ask of an LLM at most (before response-cache hits): checked against the budget."""

    requests: int
    tokens: int


@dataclass
class StepResult:
    # None: the main table is the union of `tables` in their order, stored once (no file of its own)
    data: "pl.DataFrame | None"
    tables: dict[str, "pl.DataFrame"] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-able; lands in manifest["meta"]
