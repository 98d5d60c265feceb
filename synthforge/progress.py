"""Progress bars for long work (rows/s, tokens/s, ETA), on stderr via tqdm."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class Progress:
    """A bar counting `unit`s, with optional extra throughput counters (e.g. tokens)."""

    def __init__(self, total: int | None, desc: str, unit: str = "rows", enabled: bool = True):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", disable=not enabled, dynamic_ncols=True, leave=True)
        self._start = time.perf_counter()
        self._extra: dict[str, float] = {}
        self._status: dict[str, object] = {}

    def update(self, n: int = 1, status: dict[str, object] | None = None, **counters: float) -> None:
        """Count `n` units; `counters` add to per-second rates, `status` values are shown as they are."""
        for name, value in counters.items():
            self._extra[name] = self._extra.get(name, 0) + value
        self._status.update(status or {})
        if self._extra or self._status:
            elapsed = max(time.perf_counter() - self._start, 1e-9)
            rates = {f"{k}/s": f"{v / elapsed:.1f}" for k, v in self._extra.items()}
            self._bar.set_postfix({**rates, **self._status}, refresh=False)
        self._bar.update(n)

    @property
    def counters(self) -> dict[str, float]:
        return dict(self._extra)

    def close(self) -> None:
        self._bar.close()


@contextlib.contextmanager
def progress(total: int | None, desc: str, unit: str = "rows", enabled: bool = True) -> Iterator[Progress]:
    bar = Progress(total, desc, unit, enabled)
    try:
        yield bar
    finally:
        bar.close()
