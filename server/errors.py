"""The exceptions raised inside the server, each one entry of the list of errors (drlaif/errors.py)."""

from __future__ import annotations

from typing import ClassVar

from drlaif.errors import (
    BACKEND_ERROR,
    BACKEND_STUCK,
    DEADLINE_EXCEEDED,
    GROUP_TOO_SMALL,
    INPUT_TOO_LONG,
    INVALID_RUBRIC,
    NOT_READY,
    OVERLOADED,
    QUERY_MISMATCH,
    REFERENCE_REQUIRED,
    REFERENCE_UNUSED,
    RUBRIC_CANNOT_COMPARE,
    SHUTTING_DOWN,
    UNKNOWN_RUBRIC,
    ErrorType,
)


class DrlaifError(Exception):
    """Base for errors raised inside the server that become a JSON error response; each
    subclass names its entry of the list as ``error``."""

    error: ClassVar[ErrorType]
    status_code: ClassVar[int]
    code: ClassVar[str]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.status_code, cls.code = cls.error.status, cls.error.type

    def __init__(self, message: str, *, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.headers = self.error.response_headers(retry_after_s)  # checked here, where it is raised


class UnknownRubric(DrlaifError):
    error = UNKNOWN_RUBRIC


class InvalidRubric(DrlaifError):
    """A request's rubric settings (reasoning) that do not validate or cannot be served."""

    error = INVALID_RUBRIC


class RubricCannotCompare(DrlaifError):
    error = RUBRIC_CANNOT_COMPARE


class GroupTooSmall(DrlaifError):
    """A group-pairwise request with a prompt that has a single response: nothing to compare it with."""

    error = GROUP_TOO_SMALL


class ReferenceRequired(DrlaifError):
    """An item without a reference under a rubric that shows one."""

    error = REFERENCE_REQUIRED


class ReferenceUnused(DrlaifError):
    """An item with a reference under a rubric that has no place for it."""

    error = REFERENCE_UNUSED


class QueryMismatch(DrlaifError):
    """An OpenRLHF query that does not start with its prompt (so the response cannot be found)."""

    error = QUERY_MISMATCH


class InputTooLong(DrlaifError):
    error = INPUT_TOO_LONG


class Overloaded(DrlaifError):
    error = OVERLOADED

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, retry_after_s=retry_after_s)


class NotReady(DrlaifError):
    error = NOT_READY

    def __init__(self, message: str = "the labeler is still loading; retry shortly"):
        super().__init__(message)


class BackendFailed(DrlaifError):
    """The labeler engine raised or gave up on a batch; other requests are unaffected."""

    error = BACKEND_ERROR


class BackendStuck(BackendFailed):
    """A backend call past its deadline still holds the model (transformers): the server cannot
    score until it returns, and readiness says so."""

    error = BACKEND_STUCK


class ShuttingDown(DrlaifError):
    """The server got SIGTERM: it finishes what it has and takes nothing new."""

    error = SHUTTING_DOWN

    def __init__(self, message: str = "the server is shutting down; send this to another replica or retry "
                 "after it restarts"):
        super().__init__(message)


class DeadlineExceeded(DrlaifError):
    """A request ran past --request-timeout-s; its queued work is dropped."""

    error = DEADLINE_EXCEEDED
