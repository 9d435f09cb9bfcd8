"""Errors a client can cause, each with the HTTP status it maps to."""

from __future__ import annotations


class DrlaifError(Exception):
    """Base for errors that become a JSON error response."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class UnknownRubric(DrlaifError):
    status_code = 422
    code = "unknown_rubric"


class InvalidRubric(DrlaifError):
    """A request's rubric settings (reasoning) that do not validate or cannot be served."""

    status_code = 422
    code = "invalid_rubric"


class RubricCannotCompare(DrlaifError):
    status_code = 422
    code = "rubric_cannot_compare"


class QueryMismatch(DrlaifError):
    """An OpenRLHF query that does not start with its prompt (so the response cannot be found)."""

    status_code = 422
    code = "query_mismatch"


class InputTooLong(DrlaifError):
    status_code = 413
    code = "input_too_long"


class Overloaded(DrlaifError):
    status_code = 429
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NotReady(DrlaifError):
    status_code = 503
    code = "not_ready"

    def __init__(self, message: str = "the labeler is still loading; retry shortly"):
        super().__init__(message, headers={"Retry-After": "5"})


class BackendFailed(DrlaifError):
    """The labeler engine raised or gave up on a batch; other requests are unaffected."""

    status_code = 503
    code = "backend_error"

    def __init__(self, message: str):
        super().__init__(message, headers={"Retry-After": "1"})


class BackendStuck(BackendFailed):
    """A backend call past its deadline still holds the model (transformers): the server cannot
    score until it returns, and readiness says so."""

    code = "backend_stuck"


class ShuttingDown(DrlaifError):
    """The server got SIGTERM: it finishes what it has and takes nothing new."""

    status_code = 503
    code = "shutting_down"

    def __init__(self, message: str = "the server is shutting down; send this to another replica or retry "
                 "after it restarts"):
        super().__init__(message, headers={"Retry-After": "5"})


class DeadlineExceeded(DrlaifError):
    """A request ran past --request-timeout-s; its queued work is dropped."""

    status_code = 504
    code = "deadline_exceeded"
