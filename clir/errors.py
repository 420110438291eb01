"""One exception type for everything a user can fix; the CLI and the REST app turn it into exit codes and
HTTP statuses at the edges."""

from __future__ import annotations


class ClirError(Exception):
    """An error with a message a user can act on (bad input, missing file, mismatched index...)."""

    #: HTTP status the REST app answers with; the CLI exits with 1 (2 is argparse's usage error).
    status: int = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFoundError(ClirError):
    status = 404


class ResumeRefused(ClirError):
    """A partial build or run that cannot be continued with the settings given (callers that may start over
    catch this type, not the message)."""
