"""The one list of errors a drlaif server answers: part of the wire contract.

Every error leaves as ``{"error": {"type": ..., "message": ...}}``. :data:`ERRORS` declares
each ``type`` once: its HTTP status, whether a client may retry it and the ``Retry-After`` it
is sent with, whether it belongs to the request rather than to the server, and a line for the
docs. The server's exceptions (server/errors.py), its handlers, auth, the Host check, the body limit,
readiness, group judging and the Ray ingress answer with these entries; the OpenAPI error
descriptions and the table in docs/api.md are generated from them; the reward client
(drlaif/client.py) reads them to tell a request's failure from a server's. tests/test_docs.py
checks that the server answers no error type from outside the list.

Only the standard library here, so that anything (a client, the docs build) can read the list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RETRY_AFTER = "Retry-After"
# A Retry-After worked out for each answer by whoever raises it (overloaded: from the queue's pace).
ESTIMATED = "estimated"


@dataclass(frozen=True)
class ErrorType:
    """One error the server answers: ``type`` in the body, with its status and headers."""

    type: str
    statuses: tuple[int, ...]  # one, except an error whose status is Starlette's (http_error)
    description: str  # one line: when it is answered (docs table, OpenAPI)
    retryable: bool = False  # the same request may succeed when sent again
    retry_after_s: int | Literal["estimated"] | None = None  # the Retry-After header, if any
    headers: tuple[tuple[str, str], ...] = ()  # sent with every answer (unauthorized's challenge)
    # The failure belongs to this request's batch, not to the server: a client keeps the server
    # in rotation (after its Retry-After), so that one bad input does not take every replica out.
    request_scoped: bool = False

    def __post_init__(self) -> None:
        if self.retry_after_s is not None and not self.retryable:
            raise ValueError(f"{self.type}: a Retry-After for an error that is not retryable")

    @property
    def status(self) -> int:
        """The status it is answered with (an error with several is answered with the one given)."""
        if len(self.statuses) != 1:
            raise ValueError(f"{self.type} has several statuses {self.statuses}: the caller names one")
        return self.statuses[0]

    def body(self, message: str) -> dict[str, dict[str, str]]:
        """The JSON body of an answer with this type."""
        return {"error": {"type": self.type, "message": message}}

    def response_headers(self, retry_after_s: int | None = None) -> dict[str, str]:
        """The headers an answer carries: the fixed ones and Retry-After, the declared one or,
        for an ESTIMATED one, ``retry_after_s`` (which only such a type takes)."""
        headers = dict(self.headers)
        if (retry_after_s is None) == (self.retry_after_s == ESTIMATED):
            raise ValueError(f"{self.type}: its Retry-After is {self.retry_after_s!r} in drlaif/errors.py, "
                             f"and the answer gives {retry_after_s!r}")
        seconds = retry_after_s if self.retry_after_s == ESTIMATED else self.retry_after_s
        if seconds is not None:
            headers[RETRY_AFTER] = str(seconds)
        return headers


# ----------------------------------------------------------------------------- the list

INVALID_JSON = ErrorType("invalid_json", (400,), "the body is not valid JSON")
UNAUTHORIZED = ErrorType(
    "unauthorized", (401,),
    "the server has an API key and the request has no valid `Authorization: Bearer <key>`",
    headers=(("WWW-Authenticate", "Bearer"),))
HOST_NOT_ALLOWED = ErrorType(
    "host_not_allowed", (421,),
    "the request's `Host` is not one of `--allowed-hosts` (unset: on a loopback address without an API key, "
    "only localhost names are)")
HTTP_ERROR = ErrorType("http_error", (404, 405),
                       "a path or method the server does not have (the `/ui` routes with `--no-ui`)")
BODY_TOO_LARGE = ErrorType("body_too_large", (413,), "the body is larger than `--max-body-bytes`")
INPUT_TOO_LONG = ErrorType("input_too_long", (413,),
                           "an item is longer than `--max-input-tokens` and the server runs with `--no-truncate`")
INVALID_REQUEST = ErrorType(
    "invalid_request", (422,),
    "the body or a parameter breaks the schema: a missing or extra field, a wrong type, empty or too many "
    "items, a field over `--max-field-chars`")
UNKNOWN_RUBRIC = ErrorType("unknown_rubric", (422,), "the request names a rubric the server did not load")
INVALID_RUBRIC = ErrorType(
    "invalid_rubric", (422,),
    "the request's reasoning settings do not validate, do not fit `max_input_tokens` or have a stop string "
    "the tokenizer cannot match; or the rubric lab's rubric is not one valid rubric")
RUBRIC_CANNOT_COMPARE = ErrorType("rubric_cannot_compare", (422,),
                                  "a rubric without a pairwise form, on `/compare` or in group-pairwise judging")
GROUP_TOO_SMALL = ErrorType("group_too_small", (422,),
                            "group-pairwise judging with a prompt that has a single response")
REFERENCE_REQUIRED = ErrorType(
    "reference_required", (422,),
    "an item without a `reference` under a rubric whose template shows one (`{reference}`)")
REFERENCE_UNUSED = ErrorType(
    "reference_unused", (422,),
    "an item with a `reference` under a rubric whose template has no `{reference}`: the labeler would never see it")
QUERY_MISMATCH = ErrorType("query_mismatch", (422,), "a `/get_reward` query that does not contain its prompt")
OVERLOADED = ErrorType("overloaded", (429,),
                       "the request's items do not fit beside the items in flight (`--max-queue-items`)",
                       retryable=True, retry_after_s=ESTIMATED)
INGRESS_FULL = ErrorType(
    "ingress_full", (429,),
    "on Ray Serve: the request's body does not fit beside the bodies the ingress holds (`ingress_bytes_in_flight`)",
    retryable=True, retry_after_s=1)
INTERNAL_ERROR = ErrorType(
    "internal_error", (500,),
    "an unexpected error in the server; the message names the exception, and the log has its traceback")
NOT_READY = ErrorType(
    "not_ready", (503,),
    "the labeler is loading or failed to load, or its engine died; `/health/ready` also answers it while a "
    "backend call is stuck or the server is shutting down",
    retryable=True, retry_after_s=5)
SHUTTING_DOWN = ErrorType("shutting_down", (503,),
                          "the server got SIGTERM: it finishes what it has and takes nothing new",
                          retryable=True, retry_after_s=5)
BACKEND_ERROR = ErrorType(
    "backend_error", (503,),
    "the labeler failed, stalled or gave an invalid read on the request's batch; other requests are unaffected",
    retryable=True, retry_after_s=1, request_scoped=True)
BACKEND_STUCK = ErrorType(
    "backend_stuck", (503,),
    "a backend call past `--backend-timeout-s` holds the model; readiness is 503 until it returns",
    retryable=True, retry_after_s=1)
REPLICA_UNAVAILABLE = ErrorType(
    "replica_unavailable", (503,),
    "on Ray Serve: every replica the ingress tried died under the request", retryable=True, retry_after_s=1)
DEADLINE_EXCEEDED = ErrorType(
    "deadline_exceeded", (504,),
    "the request was not answered within `--request-timeout-s`; its queued work is dropped", retryable=True,
    request_scoped=True)

ERRORS: tuple[ErrorType, ...] = (
    INVALID_JSON, UNAUTHORIZED, HTTP_ERROR, HOST_NOT_ALLOWED, BODY_TOO_LARGE, INPUT_TOO_LONG, INVALID_REQUEST,
    UNKNOWN_RUBRIC, INVALID_RUBRIC, RUBRIC_CANNOT_COMPARE, GROUP_TOO_SMALL, REFERENCE_REQUIRED, REFERENCE_UNUSED,
    QUERY_MISMATCH, OVERLOADED,
    INGRESS_FULL, INTERNAL_ERROR,
    NOT_READY, SHUTTING_DOWN, BACKEND_ERROR, BACKEND_STUCK, REPLICA_UNAVAILABLE, DEADLINE_EXCEEDED,
)


def with_status(status: int) -> list[ErrorType]:
    """The errors answered with this status, in the list's order."""
    return [e for e in ERRORS if status in e.statuses]
