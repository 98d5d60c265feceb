"""User-facing errors: one line naming file, line and field, plus how to fix it.

Anything raised as `UserError` is a mistake the user can correct; the CLI prints
`error: <message>` and exits with code 2, never a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        self.hint = hint

    def located(self, file: str | None = None, line: int | None = None, field: str | None = None) -> "UserError":
        """Fill in location details the raiser did not know (keeps what it did)."""
        self.file = self.file or file
        self.line = self.line or line
        self.field = self.field or field
        return self

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        field = f"{self.field}: " if self.field else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{field}{self.message}{hint}".replace("\n", " ")


class BuildFailed(Exception):
    """Steps of a `build --keep-going` failed while the others were built: the CLI prints the summary and
    exits with `exit_code` (2 when every failure was a UserError, else 1); `report` is the BuildReport."""

    def __init__(self, message: str, *, exit_code: int, report: object = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.report = report


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' hint, or None when nothing is close."""
    close = difflib.get_close_matches(str(word), sorted(set(map(str, choices))), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
