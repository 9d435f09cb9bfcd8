"""MkDocs hook: the API page's table of errors, generated from the list in drlaif/errors.py.

A page that holds the line ``<!-- error-table -->`` gets one row per error type the server
answers: its status, whether and when to retry (Retry-After), and when it is answered. Nothing
in the table is written by hand.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARKER = re.compile(r"^<!-- error-table -->$", re.MULTILINE)


def _retry(error: Any) -> str:
    if not error.retryable:
        return "no"
    if error.retry_after_s is None:
        return "yes"
    if isinstance(error.retry_after_s, str):  # drlaif.errors.ESTIMATED
        return "yes, after its `Retry-After` (estimated for each answer)"
    return f"yes, after `Retry-After: {error.retry_after_s}`"


def error_table(errors: Sequence[Any] | None = None) -> str:
    """The Markdown table of ``errors`` (drlaif.errors.ERRORS when None), by status."""
    if errors is None:
        from drlaif.errors import ERRORS as errors
    lines = ["| status | `type` | retry | when |", "|---|---|---|---|"]
    for e in sorted(errors, key=lambda e: e.statuses):
        statuses = ", ".join(str(s) for s in e.statuses)
        lines.append(f"| {statuses} | `{e.type}` | {_retry(e)} | {e.description.replace('|', '&#124;')} |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if not MARKER.search(markdown):
        return markdown
    # Reloaded on every build, so that `mkdocs serve` shows an edited list at once.
    errors = importlib.reload(importlib.import_module("drlaif.errors")).ERRORS
    return MARKER.sub(lambda _: error_table(errors), markdown)
