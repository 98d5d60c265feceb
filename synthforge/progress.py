"""Progress bars (rows/s, tokens/s, ETA) and status lines, on stderr, from this process or its workers.

Status lines go through the `synthforge` logger; its handler prints with
`tqdm.write`, so a line never lands glued onto a bar. `configure_logging` sets
the verbosity (-q: warnings only and no bars; -v: debug, and the libraries' own
info lines and bars too).

A `Progress` only counts; what it shows goes to the display of the process that
draws: on a terminal one live bar per running step, elsewhere (CI logs, files) a
plain line every `PLAIN_EVERY_S` seconds. A spawned worker calls `forward_to`:
its bars' snapshots and its log records then travel over a queue to the parent,
which shows them as they happen (`show_forwarded`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

LOGGER = "synthforge"
# Without a terminal: one progress line per running step this often ($SYNTHFORGE_PROGRESS_SECONDS).
PLAIN_EVERY_S = float(os.environ.get("SYNTHFORGE_PROGRESS_SECONDS", "30"))
FORWARD_EVERY_S = 0.5  # a worker sends a bar's state at most this often (and when it closes)
_bars = {"enabled": True}
_forward: dict[str, Any] = {"queue": None}
_running: dict[str, str | None] = {"label": None}  # which variant the step running here builds, for its bars
_ids = itertools.count()


class _BarSafeHandler(logging.Handler):
    """Writes records above any open progress bar instead of into it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
            sys.stderr.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class _ForwardHandler(logging.Handler):
    """In a worker: each record goes to the parent, which prints it at once."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _forward["queue"].put(("log", record.levelno, self.format(record)))
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure_logging(verbosity: int = 0) -> None:
    """-1 (quiet): warnings and errors only, no bars; 0: status lines and bars; 1 (verbose): debug."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, (_BarSafeHandler, _ForwardHandler))]:
        logger.removeHandler(handler)
    handler = _BarSafeHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    _bars["enabled"] = verbosity >= 0


def disable_bars() -> None:
    """No progress bars in this process (--no-progress); status lines stay."""
    _bars["enabled"] = False


def bars_enabled() -> bool:
    return _bars["enabled"]


def ensure_logging() -> None:
    """Default status lines for library use (e.g. a notebook) unless the caller configured logging."""
    if not logging.getLogger(LOGGER).handlers:
        configure_logging(0)


def verbose() -> bool:
    return logging.getLogger(LOGGER).isEnabledFor(logging.DEBUG)


def settings() -> tuple[int, bool]:
    """This process's log level and whether it draws bars: what a worker started now should copy."""
    return logging.getLogger(LOGGER).getEffectiveLevel(), _bars["enabled"]


def forward_to(queue: Any, level: int, bars: bool) -> None:
    """In a worker process: send bar snapshots and log records to `queue` (a multiprocessing SimpleQueue,
    whose `put` has written the bytes when it returns, so nothing sent lands after the node's result)."""
    _forward["queue"] = queue
    _bars["enabled"] = bars
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = _ForwardHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(level)


def forwarding() -> bool:
    return _forward["queue"] is not None


def show_forwarded(event: tuple) -> None:
    """In the parent: show one event a worker sent (a log line, or a bar's state)."""
    if event[0] == "log":
        logging.getLogger(LOGGER).log(event[1], event[2])
    elif event[0] == "bar":
        _DISPLAY.show(event[1])


def quiet_libraries() -> None:
    """Silence transformers' and huggingface_hub's own bars ("Loading weights") and info lines, unless -v:
    one status line of ours instead, in every mode."""
    if verbose():
        return
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    disable_progress_bars()


class Progress:
    """Counts `unit`s towards `total`, with extra throughput counters (e.g. tokens) and status values;
    thread safe (a backend's threads report into one bar)."""

    def __init__(self, total: int | None, desc: str, unit: str = "rows", enabled: bool = True):
        self.id = f"{os.getpid()}.{next(_ids)}"
        label = _running["label"]
        self.total, self.desc, self.unit = total, f"{desc} ({label})" if label else desc, unit
        self.enabled = enabled and _bars["enabled"]
        self.done: float = 0  # an int while every update is
        self._start = time.perf_counter()
        self._sent = 0.0
        self._extra: dict[str, float] = {}
        self._status: dict[str, object] = {}
        self._lock = threading.Lock()
        self._publish(closed=False, force=True)

    def update(self, n: float = 1, status: dict[str, object] | None = None, **counters: float) -> None:
        """Count `n` units; `counters` add to per-second rates, `status` values are shown as they are."""
        with self._lock:
            for name, value in counters.items():
                self._extra[name] = self._extra.get(name, 0) + value
            self._status.update(status or {})
            self.done += n
            self._publish(closed=False)

    @property
    def counters(self) -> dict[str, float]:
        return dict(self._extra)

    def close(self) -> None:
        with self._lock:
            self._publish(closed=True, force=True)

    def snapshot(self, closed: bool = False) -> dict[str, Any]:
        return {"id": self.id, "desc": self.desc, "unit": self.unit, "total": self.total, "done": self.done,
                "elapsed": time.perf_counter() - self._start, "counters": dict(self._extra),
                "status": dict(self._status), "closed": closed}

    def _publish(self, closed: bool, force: bool = False) -> None:
        if not self.enabled:
            return
        queue = _forward["queue"]
        if queue is None:
            _DISPLAY.show(self.snapshot(closed))
            return
        now = time.perf_counter()
        if force or now - self._sent >= FORWARD_EVERY_S:
            self._sent = now
            queue.put(("bar", self.snapshot(closed)))


@contextlib.contextmanager
def labelled(label: str | None) -> Iterator[None]:
    """Bars opened inside name `label` (the variant a step builds): two running steps of one name stay apart."""
    before, _running["label"] = _running["label"], label
    try:
        yield
    finally:
        _running["label"] = before


def rates(snapshot: dict[str, Any]) -> dict[str, float]:
    """Units and counters per second over the bar's own elapsed time (the worker's clock, not the parent's)."""
    elapsed = max(snapshot["elapsed"], 1e-9)
    return {f"{snapshot['unit']}/s": snapshot["done"] / elapsed,
            **{f"{name}/s": value / elapsed for name, value in snapshot["counters"].items()}}


def plain_line(snapshot: dict[str, Any]) -> str:
    """One bar's state as a line for logs: 'gen: generate 120/300 rows (40%), 4.1 rows/s, 310.2 tokens/s, ETA 44s'."""
    done, total, unit = snapshot["done"], snapshot["total"], snapshot["unit"]
    count = f"{done:,.0f}/{total:,} {unit} ({100 * done / total:.0f}%)" if total else f"{done:,.0f} {unit}"
    speeds = rates(snapshot)
    parts = [count] + [f"{value:,.1f} {name}" for name, value in speeds.items()]
    parts += [f"{name} {value}" for name, value in snapshot["status"].items()]
    per_unit = speeds[f"{unit}/s"]
    if snapshot["closed"]:
        finished = not total or done >= total  # a bar closed short (Ctrl-C, an error) did not finish
        parts.append(f"{'done in' if finished else 'stopped after'} {format_seconds(snapshot['elapsed'])}")
    elif total and per_unit > 0:
        parts.append(f"ETA {format_seconds((total - done) / per_unit)}")
    return f"{snapshot['desc']}: " + ", ".join(parts)


def format_seconds(seconds: float) -> str:
    """'42s', '3m05s', '1h02m': rounded to what a reader needs."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _Display:
    """Draws the bars of this process and of its workers: a tqdm bar per running step on a terminal or in
    a notebook, else (not a terminal) a plain line per step every PLAIN_EVERY_S seconds and when it ends."""

    def __init__(self) -> None:
        self._bars: dict[str, Any] = {}
        self._printed: dict[str, tuple[float, int]] = {}  # bar -> (last line's time, lines)
        self._lock = threading.RLock()

    def show(self, snapshot: dict[str, Any]) -> None:
        if not _bars["enabled"]:
            return
        with self._lock:
            if _draws_bars():
                self._draw(snapshot)
            else:
                self._print(snapshot)

    def _draw(self, snapshot: dict[str, Any]) -> None:
        bar = self._bars.get(snapshot["id"])
        if bar is None:
            bar = self._bars[snapshot["id"]] = _tqdm_class()(
                total=snapshot["total"], desc=snapshot["desc"], unit=f" {snapshot['unit']}", dynamic_ncols=True,
                leave=False, file=sys.stderr)  # live while the step runs; its ✓ line then says how it went
        postfix = {name: f"{value:.1f}" for name, value in rates(snapshot).items() if name != f"{snapshot['unit']}/s"}
        if postfix or snapshot["status"]:
            bar.set_postfix({**postfix, **snapshot["status"]}, refresh=False)
        bar.update(snapshot["done"] - bar.n)
        if snapshot["closed"]:
            bar.close()
            del self._bars[snapshot["id"]]

    def _print(self, snapshot: dict[str, Any]) -> None:
        now = time.monotonic()
        bar_id = snapshot["id"]
        last, lines = self._printed.setdefault(bar_id, (now, 0))
        if snapshot["closed"]:
            del self._printed[bar_id]
            if lines or PLAIN_EVERY_S <= 0:  # a long step that printed lines gets its closing one
                logging.getLogger(LOGGER).info(plain_line(snapshot))
        elif now - last >= PLAIN_EVERY_S and snapshot["done"] > 0:
            self._printed[bar_id] = (now, lines + 1)
            logging.getLogger(LOGGER).info(plain_line(snapshot))


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def _draws_bars() -> bool:
    return _in_notebook() or sys.stderr.isatty()


def _tqdm_class():
    """tqdm's notebook widget when ipywidgets is there, else the text bar (no "IProgress not found" warning)."""
    if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


_DISPLAY = _Display()


@contextlib.contextmanager
def progress(total: int | None, desc: str, unit: str = "rows", enabled: bool = True) -> Iterator[Progress]:
    bar = Progress(total, desc, unit, enabled)
    try:
        yield bar
    finally:
        bar.close()
