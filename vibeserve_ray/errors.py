"""Errors a user can cause, carried as values with a reason and raised at the edge."""

from __future__ import annotations


class BadInput(Exception):
    """Bad user input; the CLI prints `str(exc)` as one line and exits 2."""

    def __init__(self, file: str, field: str, message: str):
        self.file, self.field, self.message = file, field, message
        super().__init__(f"{file}: {field}: {message}")
