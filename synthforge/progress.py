"""Progress bars (rows/s, tokens/s, ETA) and status lines, on stderr.

Status lines go through the `synthforge` logger; its handler prints with
`tqdm.write`, so a line never lands glued onto a bar. `configure_logging` sets
the verbosity (-q: warnings only and no bars; -v: debug, and the libraries' own
info lines too).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

LOGGER = "synthforge"
_bars = {"enabled": True}


class _BarSafeHandler(logging.Handler):
    """Writes records above any open progress bar instead of into it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
            sys.stderr.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure_logging(verbosity: int = 0) -> None:
    """-1 (quiet): warnings and errors only, no bars; 0: status lines and bars; 1 (verbose): debug."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _BarSafeHandler)]:
        logger.removeHandler(handler)
    handler = _BarSafeHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    _bars["enabled"] = verbosity >= 0


def ensure_logging() -> None:
    """Default status lines for library use (e.g. a notebook) unless the caller configured logging."""
    if not logging.getLogger(LOGGER).handlers:
        configure_logging(0)


def verbose() -> bool:
    return logging.getLogger(LOGGER).isEnabledFor(logging.DEBUG)


def quiet_libraries() -> None:
    """Silence transformers' and huggingface_hub's own bars and info lines (one status line of ours instead)."""
    if verbose():
        return
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    disable_progress_bars()


class Progress:
    """A bar counting `unit`s, with optional extra throughput counters (e.g. tokens)."""

    def __init__(self, total: int | None, desc: str, unit: str = "rows", enabled: bool = True):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", disable=not (enabled and _bars["enabled"]),
                         dynamic_ncols=True, leave=True, file=sys.stderr)
        self._start = time.perf_counter()
        self._extra: dict[str, float] = {}
        self._status: dict[str, object] = {}

    def update(self, n: float = 1, status: dict[str, object] | None = None, **counters: float) -> None:
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
